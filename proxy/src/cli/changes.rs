//! The commands that change the mesh config or report on it: `push`, `promote`, `remove`,
//! `rollback`, `versions` and `status`. Every change may be for some proxies only (`--to`).

use std::path::PathBuf;
use std::time::Duration;

use sluice::control::{FilterTarget, PushRequest, list_versions, promote, remove, wait_for_acks};
use sluice_control::proto::{ProxyStatus, StatusReply};

use super::{ControlFlag, Failure, control_client};

/// Which proxies a change is for.
#[derive(clap::Args)]
pub struct ToArg {
    /// Only these proxies: service=NAME (those that registered NAME), label=KEY=VALUE (those
    /// that registered an instance with that label) or proxy=ID [every proxy].
    #[arg(long)]
    to: Option<String>,
}

#[derive(clap::Args)]
pub struct PushArgs {
    module: PathBuf,
    #[arg(long)]
    name: String,
    /// Plugin configuration (proxy_on_configure).
    #[arg(long)]
    config: Option<String>,
    /// VM configuration (proxy_on_vm_start).
    #[arg(long)]
    vm_config: Option<String>,
    #[arg(long)]
    listener: Option<String>,
    /// The chain of the route with this name instead of the listener's.
    #[arg(long)]
    route: Option<String>,
    /// On a trap, skip the filter instead of failing the request.
    #[arg(long)]
    fail_open: bool,
    /// Gradual rollout: run the module as a canary beside the filter the chain has, for
    /// this percent of streams; `sluice promote` ends it, `sluice rollback` undoes it.
    #[arg(long)]
    percent: Option<f64>,
    #[command(flatten)]
    to: ToArg,
    /// Also wait until every connected proxy applied (or rejected) the new version.
    #[arg(long)]
    wait: bool,
    #[arg(long)]
    control: Option<String>,
}

/// A filter on a chain, for `promote` and `remove`.
#[derive(clap::Args)]
pub struct FilterArgs {
    name: String,
    /// [every HTTP listener]
    #[arg(long)]
    listener: Option<String>,
    /// The chain of the route with this name instead of the listener's.
    #[arg(long)]
    route: Option<String>,
    #[command(flatten)]
    to: ToArg,
    /// Also wait until every connected proxy applied (or rejected) the new version.
    #[arg(long)]
    wait: bool,
    #[arg(long)]
    control: Option<String>,
}

#[derive(clap::Args)]
pub struct RollbackArgs {
    version: u64,
    /// Only the edits made for these proxies (as given to `push --to`) go back.
    #[command(flatten)]
    to: ToArg,
    #[arg(long)]
    control: Option<String>,
}

pub async fn push(args: PushArgs) -> Result<(), Failure> {
    let mut client = control_client(args.control).await?;
    let request = PushRequest {
        module: args.module,
        name: args.name.clone(),
        config: args.config,
        vm_config: args.vm_config,
        listener: args.listener,
        route: args.route,
        fail_open: args.fail_open,
        canary_percent: args.percent,
        to: args.to.to.clone(),
    };
    let pushed = sluice::control::push(&mut client, request)
        .await
        .map_err(Failure::command)?;
    let role = args
        .percent
        .map_or(String::new(), |p| format!(" as a {p}% canary"));
    println!(
        "{}: module sha256:{}{role} accepted as version {}{}",
        args.name,
        pushed.sha256,
        pushed.version,
        for_whom(&args.to)
    );
    if args.wait {
        await_acks(&mut client, pushed.version).await?;
    }
    Ok(())
}

/// `sluice promote` (`promoting`) or `sluice remove`: one filter edit, then, with `--wait`,
/// every connected proxy's answer.
pub async fn edit_filter(filter: FilterArgs, promoting: bool) -> Result<(), Failure> {
    let mut client = control_client(filter.control.clone()).await?;
    let target = FilterTarget {
        name: filter.name.clone(),
        listener: filter.listener.clone(),
        route: filter.route.clone(),
        to: filter.to.to.clone(),
    };
    let (edit, done) = if promoting {
        (promote(&mut client, target).await, "canary promoted")
    } else {
        (remove(&mut client, target).await, "removed")
    };
    let version = edit.map_err(Failure::command)?;
    println!(
        "{}: {done} as version {version}{}",
        filter.name,
        for_whom(&filter.to)
    );
    if filter.wait {
        await_acks(&mut client, version).await?;
    }
    Ok(())
}

pub async fn rollback(args: RollbackArgs) -> Result<(), Failure> {
    let mut client = control_client(args.control).await?;
    let new = sluice::control::rollback(&mut client, args.version, args.to.to.clone())
        .await
        .map_err(Failure::command)?;
    println!(
        "version {} is current again{}, as version {new}",
        args.version,
        for_whom(&args.to)
    );
    Ok(())
}

pub async fn status(flag: ControlFlag) -> Result<(), Failure> {
    let mut client = control_client(flag.control).await?;
    let status = sluice::control::status(&mut client)
        .await
        .map_err(Failure::command)?;
    print_status(&status);
    Ok(())
}

pub async fn versions(flag: ControlFlag) -> Result<(), Failure> {
    let mut client = control_client(flag.control).await?;
    let versions = list_versions(&mut client).await.map_err(Failure::command)?;
    for v in &versions.versions {
        let marker = if v.version == versions.current {
            "*"
        } else {
            " "
        };
        let modules: Vec<&str> = v
            .module_sha256
            .iter()
            .map(|d| &d[..d.len().min(12)])
            .collect();
        println!(
            "{marker}{:>5}  {}  {}  [modules: {}]",
            v.version,
            v.created_unix,
            v.description,
            modules.join(", ")
        );
    }
    Ok(())
}

fn for_whom(to: &ToArg) -> String {
    to.to
        .as_ref()
        .map_or(String::new(), |to| format!(" (for {to})"))
}

fn print_status(status: &StatusReply) {
    println!(
        "control version {} (answered by replica {})",
        status.current_version, status.replica
    );
    if !status.partial.is_empty() {
        println!("partial: {}", status.partial);
    }
    println!(
        "{:<28} {:<13} {:>7}  {:<20} {:<24} {:<40} note",
        "proxy", "state", "applied", "services", "replica", "identity (mutual TLS)"
    );
    for proxy in &status.proxies {
        let state = if proxy.connected {
            "connected"
        } else {
            "disconnected"
        };
        let note = if proxy.rejected_version > proxy.applied_version {
            format!(
                "rejected version {}: {}",
                proxy.rejected_version, proxy.rejected_reason
            )
        } else if !proxy.registration_error.is_empty() {
            format!("registration refused: {}", proxy.registration_error)
        } else {
            String::new()
        };
        let services = if proxy.services.is_empty() {
            "-".to_owned()
        } else {
            proxy.services.join(",")
        };
        let identity = if proxy.spiffe_id.is_empty() {
            "-"
        } else {
            &proxy.spiffe_id
        };
        println!(
            "{:<28} {:<13} {:>7}  {:<20} {:<24} {identity:<40} {note}",
            proxy.proxy_id, state, proxy.applied_version, services, proxy.replica
        );
    }
}

/// Waits for every connected proxy's answer on `version` and prints them; fails if any
/// rejected it.
async fn await_acks(client: &mut sluice_control::Client, version: u64) -> Result<(), Failure> {
    let proxies = wait_for_acks(client, version, Duration::from_secs(30))
        .await
        .map_err(Failure::command)?;
    if proxies.is_empty() {
        println!("  no proxy is connected");
    }
    print_acks(&proxies, version)
}

/// Prints what each proxy did with `version`; fails if any rejected it.
fn print_acks(proxies: &[ProxyStatus], version: u64) -> Result<(), Failure> {
    let mut rejected = 0;
    for proxy in proxies {
        if proxy.applied_version >= version {
            println!("  {}: applied", proxy.proxy_id);
        } else {
            rejected += 1;
            println!("  {}: rejected: {}", proxy.proxy_id, proxy.rejected_reason);
        }
    }
    if rejected > 0 {
        return Err(Failure::runtime(format!(
            "{rejected} of {} proxies rejected version {version}",
            proxies.len()
        )));
    }
    Ok(())
}
