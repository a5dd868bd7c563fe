//! The `sluice` command line. Subcommands and exit codes are a contract
//! (`shared/design/config-contract.md`): 0 success, 1 runtime failure, 2 bad usage or an
//! invalid config. Each command group has a file: `proxy` (the data plane and `check`),
//! `control` (the control service and join tokens), `changes` (push, remove, promote,
//! rollback, versions, status), `services` (the registry) and `demo`.

#![allow(clippy::print_stdout)]

mod changes;
mod check;
mod control;
mod demo;
mod proxy;
mod services;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "sluice",
    version,
    about = "A service-mesh data plane extended by WebAssembly"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the data plane from a YAML config file; edits to the file (and to the modules it
    /// names) are applied while serving.
    Proxy(proxy::ProxyArgs),
    /// Run the control service: it keeps modules and config versions in its data dir, pushes
    /// them to subscribed proxies, and keeps the mesh registry.
    Control(control::ControlArgs),
    /// Create a join token for WORKLOAD (such as ns/shop/sa/checkout): the proxy given it
    /// (`sluice proxy --join-token-file`) gets that workload's mesh certificates.
    JoinToken(control::JoinTokenArgs),
    /// Upload a filter module and set filter NAME on a listener's chain (default: every HTTP
    /// listener of every proxy): replaced in place if the chain has it, appended otherwise.
    Push(changes::PushArgs),
    /// End a gradual rollout: the canary of filter NAME becomes the filter for every stream.
    Promote(changes::FilterArgs),
    /// Take filter NAME off a chain (one from a proxy's own file too).
    Remove(changes::FilterArgs),
    /// Which proxies are connected, the services each registered, and the version each applied.
    Status(ControlFlag),
    /// The config versions the control service keeps.
    Versions(ControlFlag),
    /// Make an earlier version current again (as a new version).
    Rollback(changes::RollbackArgs),
    /// The mesh registry: every service (or SERVICE) with its instances, their health,
    /// identity, labels and lease.
    Services(services::ServicesArgs),
    /// Validate a config without serving; exit 2 with the problems if it is invalid.
    Check(check::CheckArgs),
    /// Run a small demo on loopback and print what to try.
    Demo,
}

/// `--control URL`, for commands that need nothing else.
#[derive(clap::Args)]
pub struct ControlFlag {
    #[arg(long)]
    control: Option<String>,
}

/// How the process ends when something went wrong.
pub struct Failure {
    pub code: u8,
    pub message: String,
}

// === impl Failure ===

impl Failure {
    fn command(error: sluice::control::CommandError) -> Self {
        Self {
            code: error.exit_code(),
            message: error.to_string(),
        }
    }

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

pub async fn run(command: Command) -> Result<(), Failure> {
    match command {
        Command::Check(args) => check::run(args).await,
        Command::Proxy(args) => proxy::run(args).await,
        Command::Control(args) => control::run(args).await,
        Command::JoinToken(args) => control::join_token(args).await,
        Command::Push(args) => changes::push(args).await,
        Command::Promote(filter) => changes::edit_filter(filter, true).await,
        Command::Remove(filter) => changes::edit_filter(filter, false).await,
        Command::Status(flag) => changes::status(flag).await,
        Command::Versions(flag) => changes::versions(flag).await,
        Command::Rollback(args) => changes::rollback(args).await,
        Command::Services(args) => services::run(args).await,
        Command::Demo => demo::run().await,
    }
}

/// `--token`, else SLUICE_CONTROL_TOKEN.
fn control_token(flag: Option<String>) -> Option<String> {
    flag.or_else(|| std::env::var("SLUICE_CONTROL_TOKEN").ok())
        .filter(|t| !t.is_empty())
}

/// `--control`, else `SLUICE_CONTROL`, else the default address.
fn control_url(flag: Option<String>) -> String {
    flag.or_else(|| std::env::var("SLUICE_CONTROL").ok())
        .unwrap_or_else(|| sluice_control::DEFAULT_CONTROL_URL.to_owned())
}

async fn control_client(url: Option<String>) -> Result<sluice_control::Client, Failure> {
    let url = control_url(url);
    sluice_control::connect(&url, control_token(None).as_deref())
        .await
        .map_err(Failure::runtime)
}

/// `1h`, `30m`, `90s`, as in the config file.
fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    sluice::config::ConfigDuration::parse(text).map(|d| d.0)
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
