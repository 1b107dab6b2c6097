//! The opampd binary: parse and validate the configuration, set up logging, open the store,
//! bind the listeners and serve until SIGTERM or SIGINT. All behaviour lives in the library.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use opampd::config::{Cli, EXIT_CONFIG};
use opampd::{telemetry, Listeners};

fn main() -> ExitCode {
    // validated before the runtime starts and before any port is bound
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            // --help and --version
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(EXIT_CONFIG as u8);
        }
    };
    let config = match cli.into_config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("opampd: {e}");
            return ExitCode::from(EXIT_CONFIG as u8);
        }
    };
    telemetry::init_tracing(config.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the runtime");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "opampd failed");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: opampd::Config) -> anyhow::Result<()> {
    tracing::info!(config = ?config, "starting");
    let store = opampd::store::open_store(&config).await.context("opening the store")?;
    let listeners = Listeners::bind(&config).await.context("binding listeners")?;
    opampd::run(&config, store, listeners, shutdown_signal()).await?;
    Ok(())
}

/// Completes on the first SIGTERM or SIGINT.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for ctrl-c");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for sigterm");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => tracing::info!(signal = "sigint", "signal received"),
        _ = term => tracing::info!(signal = "sigterm", "signal received"),
    }
}
