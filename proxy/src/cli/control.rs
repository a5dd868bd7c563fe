//! `sluice control` (the control service, the mesh CA and registry) and `sluice join-token`.

use std::path::PathBuf;
use std::time::Duration;

use sluice::control::ProxyValidator;
use sluice_control::{ControlSettings, EtcdSettings, RunningControl, StoreLocation};

use super::{Failure, control_token, control_url, parse_duration, wait_for_shutdown_signal};

#[derive(clap::Args)]
pub struct ControlArgs {
    #[arg(long, default_value = "127.0.0.1:9990")]
    listen: std::net::SocketAddr,
    /// Where modules, versions, the CA and join tokens are kept on this machine (without
    /// --store).
    #[arg(long, default_value = "sluice-control")]
    data_dir: PathBuf,
    /// Keep everything in etcd instead, shared with other replicas:
    /// etcd://HOST:PORT[,HOST:PORT...].
    #[arg(long)]
    store: Option<String>,
    /// The key prefix in etcd, which keeps this mesh apart from others on the same cluster.
    #[arg(long, default_value = "/sluice")]
    store_prefix: String,
    /// TLS to etcd: the CA (PEM) its members' certificates chain to.
    #[arg(long)]
    store_ca: Option<PathBuf>,
    /// This replica's client certificate for etcd (with --store-key), as etcd's
    /// --client-cert-auth requires.
    #[arg(long, requires = "store_key")]
    store_cert: Option<PathBuf>,
    #[arg(long, requires = "store_cert")]
    store_key: Option<PathBuf>,
    /// This replica's name in `sluice status` [the host name and the port it listens on].
    #[arg(long)]
    name: Option<String>,
    /// Serve TLS on loopback too (beyond loopback the control service always serves TLS,
    /// with a certificate from the mesh CA).
    #[arg(long)]
    tls: bool,
    /// More names (DNS or IP, comma-separated) the replica's certificate carries, as clients
    /// dial it; it always has the host name, --name's host, loopback and the listen address.
    #[arg(long, value_delimiter = ',')]
    tls_name: Vec<String>,
    /// With --store: first copy this data dir (versions with their numbers, modules, the CA,
    /// join tokens) into etcd, which must hold no other versions or CA.
    #[arg(long)]
    import_data_dir: Option<PathBuf>,
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
    cert_ttl: Duration,
    /// How long registered instances outlive their proxy's subscription (a proxy that died
    /// leaves its callers' endpoints after this); from 100ms to 1h.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    lease_ttl: Duration,
}

#[derive(clap::Args)]
pub struct JoinTokenArgs {
    workload: String,
    /// The services the workload may register (comma-separated) [any].
    #[arg(long, value_delimiter = ',')]
    services: Vec<String>,
    #[arg(long)]
    control: Option<String>,
}

pub async fn run(args: ControlArgs) -> Result<(), Failure> {
    let store = match &args.store {
        None => StoreLocation::Dir(args.data_dir),
        Some(url) => {
            let mut settings =
                EtcdSettings::parse(url, &args.store_prefix).map_err(Failure::usage)?;
            if let Some(ca) = &args.store_ca {
                let client = args.store_cert.as_deref().zip(args.store_key.as_deref());
                settings = settings.with_tls(ca, client).map_err(Failure::usage)?;
            } else if args.store_cert.is_some() {
                return Err(Failure::usage(
                    "--store-cert needs --store-ca: the CA that checks the etcd members",
                ));
            }
            StoreLocation::Etcd(settings)
        }
    };
    if let Some(dir) = &args.import_data_dir {
        let StoreLocation::Etcd(etcd) = &store else {
            return Err(Failure::usage(
                "--import-data-dir moves a data dir into etcd: give --store etcd://... too",
            ));
        };
        let imported = sluice_control::store::import_data_dir(dir, etcd, &args.trust_domain)
            .await
            .map_err(|e| Failure::runtime(format!("--import-data-dir {}: {e}", dir.display())))?;
        eprintln!(
            "imported {} into {etcd}: {} versions, {} modules, {} join tokens{}",
            dir.display(),
            imported.versions,
            imported.modules,
            imported.tokens,
            if imported.ca { ", the mesh CA" } else { "" }
        );
    }
    let settings = ControlSettings {
        listen: args.listen,
        store,
        token: control_token(args.token),
        max_module_size: args.max_module_size,
        identity: sluice_control::IdentitySettings {
            trust_domain: args.trust_domain,
            cert_ttl: args.cert_ttl,
        },
        lease_ttl: args.lease_ttl,
        name: args.name,
        tls: args.tls,
        tls_names: args.tls_name,
    };
    let control = RunningControl::start(settings, ProxyValidator::new())
        .await
        .map_err(|e| match e {
            sluice_control::ControlError::Unguarded(_)
            | sluice_control::ControlError::CertTtl(_)
            | sluice_control::ControlError::LeaseTtl(_) => Failure::usage(e),
            other => Failure::runtime(other),
        })?;
    println!("control service listening on {}", control.url());
    eprintln!(
        "mesh CA sha256:{} (join tokens carry it; for the CLI over https, set SLUICE_CONTROL_CA_SHA256 to it)",
        control.ca_digest()
    );
    wait_for_shutdown_signal().await.map_err(Failure::runtime)?;
    control.shutdown().await;
    Ok(())
}

pub async fn join_token(args: JoinTokenArgs) -> Result<(), Failure> {
    let url = control_url(args.control);
    let mut client = sluice_control::connect_identity_admin(&url, control_token(None).as_deref())
        .await
        .map_err(Failure::runtime)?;
    let services: Vec<String> = args
        .services
        .into_iter()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect();
    let request = sluice_control::proto::CreateJoinTokenRequest {
        workload: args.workload,
        services: services.clone(),
    };
    let created = client
        .create_join_token(request)
        .await
        .map_err(|status| match status.code() {
            tonic::Code::InvalidArgument => Failure::usage(status.message()),
            _ => Failure::runtime(format!("{url}: {}", status.message())),
        })?
        .into_inner();
    let may_register = if services.is_empty() {
        "any service".to_owned()
    } else {
        services.join(", ")
    };
    eprintln!(
        "join token for {} (may register: {may_register}):",
        created.spiffe_id
    );
    println!("{}", created.token);
    Ok(())
}

/// `--cert-ttl`: a certificate renewed at two thirds of its life needs at least a minute of
/// it, or the proxies would do little else.
fn parse_cert_ttl(text: &str) -> Result<Duration, String> {
    let ttl = parse_duration(text)?;
    if ttl < Duration::from_secs(60) {
        return Err(format!("{text}: at least 1m"));
    }
    Ok(ttl)
}
