//! placeholder: embedded (being written)
