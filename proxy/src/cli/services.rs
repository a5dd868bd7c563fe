//! `sluice services [NAME]`: the mesh registry as the control service holds it.

use sluice_control::proto::{Instance, ListServicesRequest, WantedService};

use super::{Failure, control_client};

#[derive(clap::Args)]
pub struct ServicesArgs {
    /// Only this service.
    service: Option<String>,
    #[arg(long)]
    control: Option<String>,
}

pub async fn run(args: ServicesArgs) -> Result<(), Failure> {
    let mut client = control_client(args.control).await?;
    let only = args.service.clone().unwrap_or_default();
    let reply = client
        .list_services(ListServicesRequest {
            service: only.clone(),
        })
        .await
        .map_err(|status| Failure::runtime(status.message()))?
        .into_inner();
    print_unregistered(&reply.unregistered);
    if reply.services.is_empty() {
        match args.service {
            Some(service) => println!("no instance of {service} is registered"),
            None => println!("no service is registered"),
        }
        return Ok(());
    }
    println!(
        "{:<20} {:<22} {:<30} {:<40} {:<8} labels",
        "service", "address", "health", "identity", "age"
    );
    for service in &reply.services {
        for instance in &service.instances {
            println!(
                "{:<20} {:<22} {:<30} {:<40} {:<8} {}",
                service.service,
                instance.address,
                health(instance),
                instance.identity,
                age(instance.seconds_registered),
                labels(instance),
            );
        }
    }
    println!(
        "(lease TTL {:?}: a proxy that disconnects keeps its instances that long)",
        std::time::Duration::from_millis(reply.lease_ttl_ms)
    );
    Ok(())
}

/// Services that clusters discover and nobody registered: their requests get 503.
fn print_unregistered(wanted: &[WantedService]) {
    for service in wanted {
        println!(
            "warning: {} is discovered by {} proxy stream(s) but has no instance registered",
            service.service, service.watchers
        );
    }
}

fn health(instance: &Instance) -> String {
    if instance.connected {
        format!("serving ({})", instance.proxy_id)
    } else {
        format!(
            "lease ends in {:.1}s",
            instance.lease_left_ms as f64 / 1000.0
        )
    }
}

fn age(seconds: u64) -> String {
    match seconds {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s => format!("{}h", s / 3600),
    }
}

fn labels(instance: &Instance) -> String {
    let mut pairs: Vec<String> = instance
        .labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    pairs.sort();
    pairs.join(",")
}
