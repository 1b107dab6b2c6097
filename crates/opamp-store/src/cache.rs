//! placeholder: cache (being written)
