//! The loadtest toolkit: simulated OpAMP agents with drift injection and reply checking, the
//! runner that paces them, and the helpers the `es-ceiling` tool shares. A black-box client: it
//! knows the wire types (`opamp-proto`) and nothing of the server's crates.

pub mod admin;
pub mod agent;
pub mod config;
pub mod latency;
pub mod loopback;
pub mod outcome;
pub mod phases;
pub mod remote_config;
pub mod report;
pub mod rng;
pub mod runner;
pub mod stats;
pub mod transport;
pub mod verify;

/// Runs a tool's main future on a runtime of `threads` threads (1: a single-threaded runtime)
/// and maps its outcome to the exit code both tools share: 0 passed, 1 ran but failed its
/// checks, 2 could not run.
pub fn run_main(
    threads: usize,
    main: impl std::future::Future<Output = anyhow::Result<bool>>,
) -> std::process::ExitCode {
    use std::process::ExitCode;
    let built = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread().worker_threads(threads).enable_all().build()
    };
    let runtime = match built {
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
