//! placeholder: conformance (being written)
