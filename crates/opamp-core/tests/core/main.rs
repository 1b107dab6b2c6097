//! Behaviour tests of opamp-core through its public API: the drift rules, the merge, the reply,
//! secrets redaction and garbage input. One test binary (modules below) so the shared 2-core box links once.

mod drift;
mod fuzz;
mod garbage;
mod merge;
mod process;
mod redact;
mod remote_config;
mod support;
