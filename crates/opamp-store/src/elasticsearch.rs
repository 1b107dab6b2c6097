//! placeholder: elasticsearch (being written)
