//! `sluice check`: validate a config (and the modules it names) without serving. Clusters
//! that discover a service are accepted whether or not it has instances yet (it may come);
//! with `--control`, those the registry does not know are listed as warnings.

use std::path::PathBuf;

use sluice::config::{self, Snapshot};

use super::{Failure, control_client};

#[derive(clap::Args)]
pub struct CheckArgs {
    #[arg(long)]
    config: PathBuf,
    /// Also look the services that clusters name up in this control service's registry.
    #[arg(long)]
    control: Option<String>,
}

pub async fn run(args: CheckArgs) -> Result<(), Failure> {
    let file = &args.config;
    let mut loaded = config::load_file(file).map_err(Failure::usage)?;
    // `mesh:` settings are checked against a stand-in identity: the real one comes from the
    // control service when the proxy runs.
    loaded.mesh = Some(sluice::tls::MeshIdentity::for_validation().map_err(Failure::runtime)?);
    let snapshot = Snapshot::build(&loaded, 0, &sluice::admin::Metrics::new(), None)
        .map_err(Failure::usage)?;
    let discovered: Vec<(usize, &str)> = loaded
        .config
        .clusters
        .iter()
        .enumerate()
        .filter_map(|(index, c)| c.service.as_deref().map(|s| (index, s)))
        .collect();
    if !discovered.is_empty() {
        match args.control {
            Some(url) => warn_unknown_services(file, &discovered, url).await?,
            None => eprintln!(
                "note: {} cluster(s) discover their endpoints from the registry; give --control to check that their services are registered",
                discovered.len()
            ),
        }
    }
    println!(
        "{}: valid ({} listeners, {} clusters)",
        file.display(),
        snapshot.listeners.len(),
        snapshot.clusters.len()
    );
    Ok(())
}

async fn warn_unknown_services(
    file: &std::path::Path,
    discovered: &[(usize, &str)],
    url: String,
) -> Result<(), Failure> {
    let mut client = control_client(Some(url.clone())).await?;
    let registered = client
        .list_services(sluice_control::proto::ListServicesRequest::default())
        .await
        .map_err(|status| Failure::runtime(format!("{url}: {}", status.message())))?
        .into_inner();
    for (index, service) in discovered {
        if !registered.services.iter().any(|s| s.service == *service) {
            eprintln!(
                "warning: {}: clusters[{index}].service: no instance of {service:?} is registered at {url} (requests get 503 until one registers)",
                file.display()
            );
        }
    }
    Ok(())
}
