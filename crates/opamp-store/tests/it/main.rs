//! The store backends' own tests, one module per backend, linked into one test binary. The
//! conformance suite every backend shares lives in the crate (`conformance`); these add what
//! only that backend has to prove.

mod cache;
mod configs;
mod embedded;
mod enrollment;
mod es_store;
mod fuzz;
