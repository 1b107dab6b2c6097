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

/// Runs a tool's main future on a multi-threaded runtime and maps its outcome to the exit code
/// both tools share: 0 passed, 1 ran but failed its checks, 2 could not run.
pub fn run_main(
    main: impl std::future::Future<Output = anyhow::Result<bool>>,
) -> std::process::ExitCode {
    use std::process::ExitCode;
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(main) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
