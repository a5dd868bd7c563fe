//! The `sluice` command line. Subcommands and exit codes are a contract
//! (`shared/design/config-contract.md`): 0 success, 1 runtime failure, 2 bad usage or an
//! invalid config.

#![allow(clippy::print_stdout)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use sluice::RunningProxy;
use sluice::config::{self, Snapshot};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "sluice",
    version,
    about = "A service-mesh data plane extended by WebAssembly"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the data plane from a YAML config file; edits to the file (and to the modules it
    /// names) are applied while serving.
    Proxy {
        #[arg(long)]
        config: PathBuf,
        /// Control service to subscribe to.
        #[arg(long)]
        control: Option<String>,
    },
    /// Validate a config without serving; exit 2 with the problems if it is invalid.
    Check {
        #[arg(long)]
        config: PathBuf,
    },
    /// Run a small demo on loopback and print what to try.
    Demo,
}

/// How the process ends when something went wrong.
struct Failure {
    code: u8,
    message: String,
}

impl Failure {
    fn usage(message: impl ToString) -> Self {
        Self {
            code: 2,
            message: message.to_string(),
        }
    }

    fn runtime(message: impl ToString) -> Self {
        Self {
            code: 1,
            message: message.to_string(),
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("SLUICE_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    // The control runtime: admin, DNS, health checks. Workers run on their own threads.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("sluice-control")
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("sluice: cannot start the control runtime: {error}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("sluice: {}", failure.message);
            ExitCode::from(failure.code)
        }
    }
}

async fn run(command: Command) -> Result<(), Failure> {
    match command {
        Command::Check { config } => check(&config),
        Command::Proxy { config, control } => {
            if let Some(url) = control {
                return Err(Failure::usage(format!(
                    "--control {url}: this build cannot subscribe to a control service yet; run from --config alone"
                )));
            }
            let loaded = config::load_file(&config).map_err(Failure::usage)?;
            serve(&loaded).await
        }
        Command::Demo => demo().await,
    }
}

fn check(file: &std::path::Path) -> Result<(), Failure> {
    let loaded = config::load_file(file).map_err(Failure::usage)?;
    let snapshot = Snapshot::build(&loaded, 0, &sluice::admin::Metrics::new(), None)
        .map_err(Failure::usage)?;
    println!(
        "{}: valid ({} listeners, {} clusters)",
        file.display(),
        snapshot.listeners.len(),
        snapshot.clusters.len()
    );
    Ok(())
}

async fn serve(loaded: &config::LoadedConfig) -> Result<(), Failure> {
    let proxy = RunningProxy::start(loaded).await.map_err(|e| match e {
        sluice::runtime::StartError::Config(config) => Failure::usage(config),
        other => Failure::runtime(other),
    })?;
    // Without a watch the proxy still serves; edits then need a restart.
    let watch = match sluice::runtime::ConfigWatch::start(proxy.applier(), loaded) {
        Ok(watch) => Some(watch),
        Err(error) => {
            tracing::warn!(%error, "config edits will not be applied until a restart");
            None
        }
    };
    wait_for_shutdown_signal().await.map_err(Failure::runtime)?;
    drop(watch);
    proxy.shutdown().await;
    Ok(())
}

async fn wait_for_shutdown_signal() -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = terminate.recv() => tracing::info!("SIGTERM received"),
        _ = interrupt.recv() => tracing::info!("SIGINT received"),
    }
    Ok(())
}

async fn demo() -> Result<(), Failure> {
    let mut apps = Vec::new();
    for name in ["hello-1", "hello-2"] {
        apps.push(
            sluice::demo::start_demo_app(name)
                .await
                .map_err(Failure::runtime)?,
        );
    }
    let loaded = sluice::demo::demo_config(&apps).map_err(Failure::runtime)?;
    let proxy = RunningProxy::start(&loaded)
        .await
        .map_err(Failure::runtime)?;
    let gateway = sluice::demo::GATEWAY_ADDRESS;
    let admin = sluice::demo::ADMIN_ADDRESS;
    println!(
        "\nSluice demo is running: a gateway on {gateway} in front of two app instances ({} and {}).\n\n\
         Try:\n  \
         curl -s http://{gateway}/hello            # round-robin: run it twice and see both instances\n  \
         curl -s --http2-prior-knowledge http://{gateway}/h2   # HTTP/2 (h2c) downstream\n  \
         curl -s http://{admin}/metrics | grep sluice_http_requests_total\n  \
         curl -s http://{admin}/config\n  \
         curl -s http://{admin}/ready\n\n\
         Ctrl-C stops everything.",
        apps[0], apps[1]
    );
    wait_for_shutdown_signal().await.map_err(Failure::runtime)?;
    proxy.shutdown().await;
    Ok(())
}
