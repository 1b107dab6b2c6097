//! The loadtest toolkit: simulated OpAMP agents with drift injection and reply checking, the
//! runner that paces them, and the helpers the `es-ceiling` tool shares. A black-box client: it
//! knows the wire types (`opamp-proto`) and nothing of the server's crates.

pub mod agent;
pub mod latency;
pub mod loopback;
pub mod report;
pub mod rng;
pub mod runner;
pub mod stats;
pub mod transport;
