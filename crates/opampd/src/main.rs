//! The opampd binary: parse and validate the configuration, set up logging, open the store,
//! bind the listeners and serve until SIGTERM or SIGINT; SIGHUP re-reads the TLS files. Or, with
//! a command (`agents`, `stats`), ask a running server's admin API and print the answer. All
//! behaviour lives in the library.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use opampd::client::{self, ClientLine, Command, CommandLine};
use opampd::config::EXIT_CONFIG;
use opampd::store::Store;
use opampd::tls::{ReloadTrigger, ServerTls};
use opampd::{Listeners, telemetry};

// Profiling under load showed ~38% of the server's CPU in glibc malloc/free/memmove (many small,
// short-lived allocations across worker threads); with mimalloc the server's CPU per message on
// the Elasticsearch path went from ~139 to ~123 us (docs/benchmarks.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // validated before the runtime starts and before any port is bound
    if client::is_client_command(std::env::args_os().nth(1).as_deref()) {
        return match ClientLine::try_parse() {
            Ok(line) => ask(line.command),
            Err(e) => {
                let _ = e.print();
                ExitCode::from(if e.use_stderr() { EXIT_CONFIG as u8 } else { 0 })
            }
        };
    }
    let cli = match CommandLine::try_parse() {
        Ok(CommandLine { command: None, serve }) => serve,
        Ok(CommandLine { command: Some(Command::Serve(serve)), .. }) => *serve,
        Ok(CommandLine { command: Some(Command::Client(command)), .. }) => {
            return ask(command);
        }
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
    // the TLS files are configuration too: read and checked before any port is bound
    let tls = match config.tls.as_ref().map(ServerTls::load).transpose() {
        Ok(tls) => tls,
        Err(e) => {
            eprintln!("opampd: invalid configuration: {e}");
            return ExitCode::from(EXIT_CONFIG as u8);
        }
    };
    telemetry::init_tracing(config.log_format);
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = config.worker_threads {
        builder.worker_threads(n);
    }
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the runtime");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(config, tls)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "opampd failed");
            ExitCode::FAILURE
        }
    }
}

/// Runs a command against a running server's admin API; its errors go to stderr.
fn ask(command: client::ClientCommand) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("opampd: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(client::run(command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("opampd: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

async fn serve(config: opampd::Config, tls: Option<ServerTls>) -> anyhow::Result<()> {
    tracing::info!(config = ?config, "starting");
    let shutdown = shutdown_signal()?;
    if let Some(tls) = &tls {
        reload_on_sighup(tls.clone())?;
    }
    let store = Store::open(&config).await.context("opening the store")?;
    let listeners = Listeners::bind(&config).await.context("binding listeners")?;
    let served = opampd::run_with_tls(&config, store.shared(), listeners, tls, shutdown).await;
    let closed = store.close().await;
    served?;
    closed.context("closing the store")?;
    Ok(())
}

/// Completes on the first SIGTERM or SIGINT. The handlers are installed when this is called,
/// not when the future is first polled, so a signal that arrives while the server is starting
/// is not lost to the default action (death without a flush).
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    #[cfg(unix)]
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the sigterm handler")?;
    #[cfg(unix)]
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .context("installing the sigint handler")?;
    Ok(async move {
        #[cfg(unix)]
        tokio::select! {
            _ = term.recv() => tracing::info!(signal = "sigterm", "signal received"),
            _ = int.recv() => tracing::info!(signal = "sigint", "signal received"),
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            tracing::info!(signal = "ctrl-c", "signal received");
        }
    })
}

/// Re-reads the TLS files on every SIGHUP, for new handshakes; open connections keep theirs
/// and a failed reload keeps the previous certificate (the reload logs either outcome). The
/// handler is installed before the listeners are bound, so an early SIGHUP is not fatal.
/// Without TLS there is nothing to reload and SIGHUP keeps its default action.
fn reload_on_sighup(tls: ServerTls) -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .context("installing the sighup handler")?;
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                tracing::info!(signal = "sighup", "signal received");
                let _ = tls.reload(ReloadTrigger::Signal).await;
            }
        });
    }
    #[cfg(not(unix))]
    let _ = tls;
    Ok(())
}
