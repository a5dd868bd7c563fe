use std::time::Duration;

use super::*;
use crate::tokens::TokenGrant;

fn instance(service: &str, address: &str, labels: &[(&str, &str)]) -> Registration {
    Registration {
        service: service.into(),
        address: address.parse().unwrap(),
        labels: labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
    }
}

fn addresses(registry: &Registry, service: &str) -> Vec<String> {
    registry
        .instances(service)
        .iter()
        .map(|i| i.address.to_string())
        .collect()
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn instances_stay_for_the_lease_after_the_subscription_ends() {
    let registry = Registry::start(Duration::from_secs(10));
    let guard = registry.register(
        "p1",
        "spiffe://t/hello",
        vec![instance("hello", "127.0.0.1:1", &[("zone", "a")])],
    );
    assert_eq!(addresses(&registry, "hello"), ["127.0.0.1:1"]);
    assert!(registry.instances("hello")[0].lease_until.is_none());

    drop(guard);
    tokio::time::sleep(Duration::from_secs(9)).await;
    assert_eq!(
        addresses(&registry, "hello"),
        ["127.0.0.1:1"],
        "the lease still runs"
    );
    assert!(registry.instances("hello")[0].lease_until.is_some());
    tokio::time::sleep(Duration::from_millis(1001)).await;
    assert!(
        addresses(&registry, "hello").is_empty(),
        "the lease ran out"
    );
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_proxy_back_within_its_lease_keeps_its_instances() {
    let registry = Registry::start(Duration::from_secs(10));
    let (mut changes, _progress) = registry.watch();
    let hello = vec![instance("hello", "127.0.0.1:1", &[])];
    drop(registry.register("p1", "id", hello.clone()));
    let first = changes.try_recv().expect("the registration is a change");
    tokio::time::sleep(Duration::from_secs(5)).await;
    let _again = registry.register("p1", "id", hello);
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(addresses(&registry, "hello"), ["127.0.0.1:1"]);
    assert!(
        changes.try_recv().is_err(),
        "neither the disconnection nor the return changed membership (after {first:?})"
    );
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn one_address_registered_twice_is_one_instance_and_the_first_stands() {
    let registry = Registry::start(Duration::from_secs(10));
    let _a = registry.register("p1", "id-a", vec![instance("hello", "127.0.0.1:1", &[])]);
    tokio::time::sleep(Duration::from_millis(1)).await;
    let b = registry.register("p2", "id-b", vec![instance("hello", "127.0.0.1:1", &[])]);
    let instances = registry.instances("hello");
    assert_eq!(instances.len(), 1);
    assert_eq!(instances[0].identity, "id-a");
    drop(b);
    tokio::time::sleep(Duration::from_secs(11)).await;
    assert_eq!(registry.instances("hello").len(), 1, "p1 still holds it");
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn deregistering_removes_at_once_and_only_for_the_identity_that_registered() {
    let registry = Registry::start(Duration::from_secs(10));
    let _guard = registry.register(
        "p1",
        "spiffe://t/hello",
        vec![
            instance("hello", "127.0.0.1:1", &[]),
            instance("hello-admin", "127.0.0.1:2", &[]),
        ],
    );
    let refused = registry.deregister("p1", "spiffe://t/other").await;
    assert!(
        refused
            .unwrap_err()
            .to_string()
            .contains("registered as spiffe://t/hello")
    );
    assert_eq!(
        registry.deregister("p1", "spiffe://t/hello").await.unwrap(),
        2
    );
    assert!(registry.services().is_empty());
    assert_eq!(
        registry.deregister("p1", "spiffe://t/hello").await.unwrap(),
        0
    );
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn only_services_whose_instances_changed_are_announced() {
    let registry = Registry::start(Duration::from_secs(1));
    let (mut changes, _progress) = registry.watch();
    let _a = registry.register(
        "p1",
        "id",
        vec![
            instance("a", "127.0.0.1:1", &[]),
            instance("b", "127.0.0.1:2", &[]),
        ],
    );
    let _again = registry.register(
        "p1",
        "id",
        vec![
            instance("a", "127.0.0.1:1", &[]),
            instance("b", "127.0.0.1:3", &[]),
        ],
    );
    let mut seen = Vec::new();
    while let Ok(change) = changes.try_recv() {
        seen.push(change.service.to_string());
    }
    assert_eq!(seen, ["a", "b", "b"]);
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn while_settling_removed_addresses_are_listed_as_withdrawn() {
    let registry = Registry::start(Duration::from_secs(1));
    assert!(registry.settling());
    let _guard = registry.register("p1", "id", vec![instance("a", "127.0.0.1:1", &[])]);
    registry.deregister("p1", "id").await.unwrap();
    assert_eq!(
        registry.withdrawn("a"),
        ["127.0.0.1:1".parse::<SocketAddr>().unwrap()]
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        registry.settling(),
        "past a short TTL, proxies may still be reconnecting"
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(!registry.settling());
    let _b = registry.register("p2", "id", vec![instance("b", "127.0.0.1:2", &[])]);
    assert!(registry.withdrawn("a").is_empty(), "settled: forgotten");
}

#[test]
fn registrations_are_checked_against_names_addresses_and_the_token() {
    let grant = TokenGrant {
        workload: "ns/demo/sa/hello".into(),
        services: Some(vec!["hello".into()]),
    };
    let request = |service: &str, address: &str| crate::proto::Registration {
        service: service.into(),
        address: address.into(),
        labels: [("version".to_owned(), "v1".to_owned())].into(),
    };
    let ok = check_registrations(&[request("hello", "127.0.0.1:15006")], &grant).unwrap();
    assert_eq!(ok[0].labels["version"], "v1");

    let refused = check_registrations(
        &[
            request("hello", "127.0.0.1:1"),
            request("billing", "127.0.0.1:2"),
        ],
        &grant,
    )
    .unwrap_err();
    assert_eq!(
        refused.to_string(),
        r#"registrations[1]: the join token of ns/demo/sa/hello does not allow registering service "billing" (it allows: hello)"#
    );
    for (service, address, expected) in [
        ("hello", "localhost:1", "is not IP:port"),
        ("hello", "0.0.0.0:80", "concrete IP"),
        ("hello", "127.0.0.1:0", "concrete IP"),
        ("-bad", "127.0.0.1:1", "not a service name"),
    ] {
        let error = check_registrations(&[request(service, address)], &grant).unwrap_err();
        assert!(error.to_string().contains(expected), "{error}");
    }
}
