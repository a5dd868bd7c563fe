//! `sluice proxy`: serve a config file, follow a control service, keep the workload's mesh
//! certificate renewed, register its services, and on SIGTERM deregister, then drain.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use sluice::RunningProxy;
use sluice::config;
use sluice::control::{ControlSubscription, IdentitySource, SubscriberSettings};

use super::{Failure, control_token, wait_for_shutdown_signal};

#[derive(clap::Args)]
pub struct ProxyArgs {
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
    /// `tls: { mesh: ... }` listeners and clusters, and may register `register:` services.
    #[arg(long)]
    join_token_file: Option<PathBuf>,
}

pub async fn run(args: ProxyArgs) -> Result<(), Failure> {
    let mut loaded = config::load_file(&args.config).map_err(Failure::usage)?;
    let join_token = match &args.join_token_file {
        Some(file) => Some(read_join_token(args.control.is_some(), file)?),
        None => None,
    };
    if !loaded.config.register.is_empty() && (args.control.is_none() || join_token.is_none()) {
        return Err(Failure::usage(format!(
            "{}: register: registering services needs the control service that keeps the registry and the workload's identity: start the proxy with --control and --join-token-file",
            args.config.display()
        )));
    }
    if args.control.is_none()
        && let Some(index) = loaded
            .config
            .clusters
            .iter()
            .position(|c| c.service.is_some())
    {
        return Err(Failure::usage(format!(
            "{}: clusters[{index}].service: discovered endpoints come from the control service's registry: start the proxy with --control",
            args.config.display()
        )));
    }
    // An https:// control service is checked by the CA the join token names (or the
    // environment's SLUICE_CONTROL_CA / SLUICE_CONTROL_CA_SHA256).
    let mut trust = sluice_control::ControlTrust::for_join_token(join_token.as_deref())
        .map_err(Failure::usage)?;
    let renewal = match (&args.control, &join_token) {
        (Some(url), Some(token)) => {
            let source = IdentitySource {
                url: url.clone(),
                join_token: token.clone(),
                trust: trust.clone(),
            };
            let identity = source.obtain().await.map_err(Failure::runtime)?;
            loaded.mesh = Some(Arc::clone(&identity));
            // Once it has its workload certificate, the proxy subscribes with mutual TLS.
            trust = trust.with_client_certificate(Arc::new(sluice::tls::CurrentCertificate(
                Arc::clone(&identity),
            )));
            Some(source.keep_renewed(identity))
        }
        _ => None,
    };
    let subscription = args.control.map(|url| SubscriberSettings {
        url,
        token: control_token(None),
        proxy_id: args.id.unwrap_or_else(default_proxy_id),
        join_token,
        trust,
    });
    let served = serve(&loaded, subscription).await;
    if let Some(renewal) = renewal {
        renewal.abort();
    }
    served
}

/// The join token in `file`, for the control service of `--control`.
fn read_join_token(has_control: bool, file: &Path) -> Result<String, Failure> {
    if !has_control {
        return Err(Failure::usage(
            "--join-token-file needs --control: the control service issues the certificates",
        ));
    }
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
    Ok(token)
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
    drop(watch);
    // Callers stop sending here before the listeners stop accepting.
    if let Some(control) = control {
        control.leave().await;
    }
    proxy.shutdown().await;
    Ok(())
}

fn default_proxy_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "proxy".to_owned());
    format!("{host}-{}", std::process::id())
}
