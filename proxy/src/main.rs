//! The `sluice` command line. Subcommands and exit codes are a contract
//! (`shared/design/config-contract.md`): 0 success, 1 runtime failure, 2 bad usage or an
//! invalid config.

#![allow(clippy::print_stdout)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use std::time::Duration;

use sluice::RunningProxy;
use sluice::config::{self, Snapshot};
use sluice::control::{
    CommandError, ControlSubscription, FilterTarget, ProxyValidator, PushRequest,
    SubscriberSettings, list_versions, promote, remove, rollback, wait_for_acks,
};
use sluice_control::{ControlSettings, RunningControl};
use tracing_subscriber::EnvFilter;

// glibc's malloc showed as the largest userland cost per request under load (every request
// allocates its header maps, body frames and filter contexts); mimalloc's per-thread free
// lists suit a thread-per-core proxy. Built without transparent huge pages (`no_thp`): with
// them, its arenas doubled the proxy's resident memory for no measurable gain.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
        /// Control service to subscribe to; its changes apply on top of the file's config.
        #[arg(long)]
        control: Option<String>,
        /// How `sluice status` names this proxy [host name and process id].
        #[arg(long)]
        id: Option<String>,
        /// A file holding this workload's join token (`sluice join-token`): the proxy gets its
        /// mesh certificate from the control service (`--control`) and keeps it renewed, for
        /// `tls: { mesh: ... }` listeners and clusters.
        #[arg(long)]
        join_token_file: Option<PathBuf>,
    },
    /// Run the control service: it keeps modules and config versions in its data dir and
    /// pushes them to subscribed proxies.
    Control {
        #[arg(long, default_value = "127.0.0.1:9990")]
        listen: std::net::SocketAddr,
        #[arg(long, default_value = "sluice-control")]
        data_dir: PathBuf,
        /// Bearer token every client must send (required to listen beyond loopback); also
        /// read from SLUICE_CONTROL_TOKEN.
        #[arg(long)]
        token: Option<String>,
        /// Largest module accepted, in bytes.
        #[arg(long, default_value_t = sluice_control::DEFAULT_MAX_MODULE_SIZE)]
        max_module_size: usize,
        /// The mesh's trust domain: workload identities are spiffe://<trust domain>/<workload>.
        #[arg(long, default_value = "sluice.local")]
        trust_domain: String,
        /// How long the workload certificates it issues are valid (proxies renew them at two
        /// thirds of that); at most 7 days.
        #[arg(long, default_value = "1h", value_parser = parse_cert_ttl)]
        cert_ttl: std::time::Duration,
    },
    /// Create a join token for WORKLOAD (such as ns/shop/sa/checkout): the proxy given it
    /// (`sluice proxy --join-token-file`) gets that workload's mesh certificates.
    JoinToken {
        workload: String,
        #[arg(long)]
        control: Option<String>,
    },
    /// Upload a filter module and set filter NAME on a listener's chain (default: every HTTP
    /// listener of every proxy): replaced in place if the chain has it, appended otherwise.
    Push {
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
        /// Also wait until every connected proxy applied (or rejected) the new version.
        #[arg(long)]
        wait: bool,
        #[arg(long)]
        control: Option<String>,
    },
    /// End a gradual rollout: the canary of filter NAME becomes the filter for every stream.
    Promote(FilterArgs),
    /// Take filter NAME off a chain (one from a proxy's own file too).
    Remove(FilterArgs),
    /// Which proxies are connected and which version each applied.
    Status {
        #[arg(long)]
        control: Option<String>,
    },
    /// The config versions the control service keeps.
    Versions {
        #[arg(long)]
        control: Option<String>,
    },
    /// Make an earlier version current again (as a new version).
    Rollback {
        version: u64,
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

/// A filter on a chain, for `promote` and `remove`.
#[derive(clap::Args)]
struct FilterArgs {
    name: String,
    /// [every HTTP listener]
    #[arg(long)]
    listener: Option<String>,
    /// The chain of the route with this name instead of the listener's.
    #[arg(long)]
    route: Option<String>,
    /// Also wait until every connected proxy applied (or rejected) the new version.
    #[arg(long)]
    wait: bool,
    #[arg(long)]
    control: Option<String>,
}

impl FilterArgs {
    fn target(&self) -> FilterTarget {
        FilterTarget {
            name: self.name.clone(),
            listener: self.listener.clone(),
            route: self.route.clone(),
        }
    }
}

/// How the process ends when something went wrong.
struct Failure {
    code: u8,
    message: String,
}

impl Failure {
    fn command(error: CommandError) -> Self {
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
        Command::Proxy {
            config,
            control,
            id,
            join_token_file,
        } => {
            let mut loaded = config::load_file(&config).map_err(Failure::usage)?;
            let renewal = match join_token_file {
                Some(file) => {
                    let source = identity_source(control.clone(), &file)?;
                    let identity = source.obtain().await.map_err(Failure::runtime)?;
                    loaded.mesh = Some(std::sync::Arc::clone(&identity));
                    Some(source.keep_renewed(identity))
                }
                None => None,
            };
            let subscription = control.map(|url| SubscriberSettings {
                url,
                token: control_token(None),
                proxy_id: id.unwrap_or_else(default_proxy_id),
            });
            let served = serve(&loaded, subscription).await;
            if let Some(renewal) = renewal {
                renewal.abort();
            }
            served
        }
        Command::Control {
            listen,
            data_dir,
            token,
            max_module_size,
            trust_domain,
            cert_ttl,
        } => {
            let settings = ControlSettings {
                listen,
                data_dir,
                token: control_token(token),
                max_module_size,
                identity: sluice_control::IdentitySettings {
                    trust_domain,
                    cert_ttl,
                },
            };
            let control = RunningControl::start(settings, ProxyValidator::new())
                .await
                .map_err(|e| match e {
                    sluice_control::ControlError::Unguarded(_)
                    | sluice_control::ControlError::CertTtl(_) => Failure::usage(e),
                    other => Failure::runtime(other),
                })?;
            println!("control service listening on http://{}", control.address());
            wait_for_shutdown_signal().await.map_err(Failure::runtime)?;
            control.shutdown().await;
            Ok(())
        }
        Command::Push {
            module,
            name,
            config,
            vm_config,
            listener,
            route,
            fail_open,
            percent,
            wait,
            control,
        } => {
            let mut client = control_client(control).await?;
            let request = PushRequest {
                module,
                name: name.clone(),
                config,
                vm_config,
                listener,
                route,
                fail_open,
                canary_percent: percent,
            };
            let pushed = sluice::control::push(&mut client, request)
                .await
                .map_err(Failure::command)?;
            let role = percent.map_or(String::new(), |p| format!(" as a {p}% canary"));
            println!(
                "{name}: module sha256:{}{role} accepted as version {}",
                pushed.sha256, pushed.version
            );
            if wait {
                await_acks(&mut client, pushed.version).await?;
            }
            Ok(())
        }
        Command::Promote(filter) => edit_filter(filter, true).await,
        Command::Remove(filter) => edit_filter(filter, false).await,
        Command::Status { control } => {
            let mut client = control_client(control).await?;
            let status = sluice::control::status(&mut client)
                .await
                .map_err(Failure::command)?;
            print_status(&status);
            Ok(())
        }
        Command::Versions { control } => {
            let mut client = control_client(control).await?;
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
        Command::Rollback { version, control } => {
            let mut client = control_client(control).await?;
            let new = rollback(&mut client, version)
                .await
                .map_err(Failure::command)?;
            println!("version {version} is current again, as version {new}");
            Ok(())
        }
        Command::JoinToken { workload, control } => {
            let url = control_url(control);
            let mut client =
                sluice_control::connect_identity_admin(&url, control_token(None).as_deref())
                    .await
                    .map_err(Failure::runtime)?;
            let created = client
                .create_join_token(sluice_control::proto::CreateJoinTokenRequest { workload })
                .await
                .map_err(|status| match status.code() {
                    tonic::Code::InvalidArgument => Failure::usage(status.message()),
                    _ => Failure::runtime(format!("{url}: {}", status.message())),
                })?
                .into_inner();
            eprintln!("join token for {}:", created.spiffe_id);
            println!("{}", created.token);
            Ok(())
        }
        Command::Demo => demo().await,
    }
}

/// Where `--join-token-file` gets the workload identity: the control service of `--control`.
fn identity_source(
    control: Option<String>,
    file: &std::path::Path,
) -> Result<sluice::control::IdentitySource, Failure> {
    let Some(url) = control else {
        return Err(Failure::usage(
            "--join-token-file needs --control: the control service issues the certificates",
        ));
    };
    let token = std::fs::read_to_string(file)
        .map_err(|e| {
            Failure::usage(format!(
                "{}: cannot read the join token: {e}",
                file.display()
            ))
        })?
        .trim()
        .to_owned();
    if token.is_empty() {
        return Err(Failure::usage(format!(
            "{}: the file is empty",
            file.display()
        )));
    }
    Ok(sluice::control::IdentitySource {
        url,
        join_token: token,
    })
}

/// `1h`, `30m`, `90s`, as in the config file.
fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    config::ConfigDuration::parse(text).map(|d| d.0)
}

/// `--cert-ttl`: a certificate renewed at two thirds of its life needs at least a minute of
/// it, or the proxies would do little else.
fn parse_cert_ttl(text: &str) -> Result<std::time::Duration, String> {
    let ttl = parse_duration(text)?;
    if ttl < Duration::from_secs(60) {
        return Err(format!("{text}: at least 1m"));
    }
    Ok(ttl)
}

fn check(file: &std::path::Path) -> Result<(), Failure> {
    let mut loaded = config::load_file(file).map_err(Failure::usage)?;
    // `mesh:` settings are checked against a stand-in identity: the real one comes from the
    // control service when the proxy runs.
    loaded.mesh = Some(sluice::tls::MeshIdentity::for_validation().map_err(Failure::runtime)?);
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

async fn serve(
    loaded: &config::LoadedConfig,
    subscription: Option<SubscriberSettings>,
) -> Result<(), Failure> {
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
    let control =
        subscription.map(|settings| ControlSubscription::start(settings, proxy.applier()));
    wait_for_shutdown_signal().await.map_err(Failure::runtime)?;
    drop((watch, control));
    proxy.shutdown().await;
    Ok(())
}

/// `sluice promote` (`promoting`) or `sluice remove`: one filter edit, then, with `--wait`,
/// every connected proxy's answer.
async fn edit_filter(filter: FilterArgs, promoting: bool) -> Result<(), Failure> {
    let mut client = control_client(filter.control.clone()).await?;
    let (edit, done) = if promoting {
        (
            promote(&mut client, filter.target()).await,
            "canary promoted",
        )
    } else {
        (remove(&mut client, filter.target()).await, "removed")
    };
    let version = edit.map_err(Failure::command)?;
    println!("{}: {done} as version {version}", filter.name);
    if filter.wait {
        await_acks(&mut client, version).await?;
    }
    Ok(())
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

fn default_proxy_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "proxy".to_owned());
    format!("{host}-{}", std::process::id())
}

fn print_status(status: &sluice_control::proto::StatusReply) {
    println!("control version {}", status.current_version);
    println!("{:<28} {:<13} {:>7}  note", "proxy", "state", "applied");
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
        } else {
            String::new()
        };
        println!(
            "{:<28} {:<13} {:>7}  {note}",
            proxy.proxy_id, state, proxy.applied_version
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
fn print_acks(proxies: &[sluice_control::proto::ProxyStatus], version: u64) -> Result<(), Failure> {
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
    println!(
        "Building the standard filters (authz, circuit-breaker, metrics, ratelimit, retry) for wasm32-wasip1; the first time takes a minute or two..."
    );
    let filters = tokio::task::spawn_blocking(sluice::demo::build_standard_filters)
        .await
        .map_err(Failure::runtime)?
        .map_err(Failure::runtime)?;
    println!("Starting the control service, two apps with their sidecars, and the gateway...");
    let control_address = sluice::demo::CONTROL_ADDRESS;
    let (gateway, admin) = (sluice::demo::GATEWAY_ADDRESS, sluice::demo::ADMIN_ADDRESS);
    let addresses = sluice::demo::DemoAddresses {
        gateway,
        admin,
        control: control_address,
    };
    let mesh = sluice::demo::start_mesh(&filters, &addresses)
        .await
        .map_err(Failure::runtime)?;
    let subscription = ControlSubscription::start(
        SubscriberSettings {
            url: format!("http://{control_address}"),
            token: None,
            proxy_id: "gateway".to_owned(),
        },
        mesh.gateway.applier(),
    );
    let sidecars: Vec<String> = mesh
        .sidecars
        .iter()
        .filter_map(|s| s.listener_address("inbound"))
        .map(|a| a.to_string())
        .collect();
    let ([sidecar_1, sidecar_2], [app_1, app_2]) = (sidecars.as_slice(), mesh.apps.as_slice())
    else {
        return Err(Failure::runtime("the demo's two sidecars did not start"));
    };
    let ratelimit = filters.join("ratelimit.wasm");
    let api_key = sluice::demo::DEMO_API_KEY;
    let domain = sluice::demo::TRUST_DOMAIN;
    println!(
        "\nSluice demo is running on loopback:\n  \
         gateway   http://{gateway}  (filters: metrics and authz everywhere, ratelimit on /limited, circuit-breaker on /flaky, retry on /unsteady)\n  \
         sidecars  {} -> hello-1 at {}, {} -> hello-2 at {}\n            \
         mutual TLS from the gateway (spiffe://{domain}/ns/demo/sa/gateway); only that identity gets in\n  \
         admin     http://{admin}\n  \
         control   http://{control_address}  (the mesh CA; the gateway subscribes to it)\n\n\
         Try:\n  \
         curl -s http://{gateway}/hello          # run it twice: both instances answer, and name their caller\n  \
         curl -s --http2-prior-knowledge http://{gateway}/h2\n  \
         curl -s -o /dev/null -w '%{{http_code}}\\n' http://{}/hello   # the sidecar refuses a client without a mesh certificate\n  \
         for i in 1 2 3 4 5; do curl -s -o /dev/null -w '%{{http_code}} ' http://{gateway}/limited; done; echo\n                                          \
         # 3 requests per 10s, then 429 with retry-after\n  \
         curl -s -i http://{gateway}/admin/stats      # 401: needs an API key\n  \
         curl -s -H 'x-api-key: {api_key}' http://{gateway}/admin/stats\n  \
         for i in 1 2 3 4 5; do curl -s -o /dev/null -w '%{{http_code}} ' http://{gateway}/flaky; done; echo\n                                          \
         # the app fails 3 times, then the breaker answers for 10s\n  \
         for i in 1 2 3 4; do curl -s -o /dev/null -w '%{{http_code}} %header{{x-sluice-attempts}}  ' http://{gateway}/unsteady; done; echo\n                                          \
         # the app fails every other request; clients see 200, some after a retry\n  \
         curl -s http://{admin}/metrics | grep sluice_wasm_counter   # what the filters count\n  \
         curl -s http://{admin}/config\n\n\
         Change a filter while it serves (no restart, no failed request):\n  \
         cargo run --release -p sluice -- push {} --name ratelimit --route limited --config '{{\"rate\": 100, \"per\": \"10s\"}}' --wait\n  \
         cargo run --release -p sluice -- status\n  \
         cargo run --release -p sluice -- rollback 0     # back to the file's 3 per 10s\n\n\
         Ctrl-C stops everything.",
        sidecar_1,
        app_1,
        sidecar_2,
        app_2,
        sidecar_1,
        ratelimit.display(),
    );
    wait_for_shutdown_signal().await.map_err(Failure::runtime)?;
    drop(subscription);
    mesh.shutdown().await;
    Ok(())
}
