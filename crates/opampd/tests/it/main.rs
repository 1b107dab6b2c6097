//! opampd's black-box tests, one module per area, linked into one test binary (one link of the
//! server instead of one per file). Every test runs a real server on 127.0.0.1:0 with a real
//! client; the Elasticsearch ones run against the real cluster `scripts/test.sh` provides.

mod admin;
mod auth;
mod cli;
mod common;
mod console;
mod es_cold_start;
mod es_failure;
mod es_multi_instance;
mod es_tls;
mod fleet_documents;
mod fuzz;
mod http;
mod interop_node;
mod layering;
mod remote_config;
mod storage_faults;
mod superseded;
mod tls;
mod ws;
