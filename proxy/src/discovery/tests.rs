use sluice_control::proto::Instance;

use super::*;
use crate::admin::Metrics;
use crate::config::ClusterConfig;

fn cluster(yaml: &str) -> Arc<Cluster> {
    let config: ClusterConfig = serde_yaml::from_str(yaml).unwrap();
    Cluster::new(&config, Metrics::new(), None)
}

fn instance(address: &str, identity: &str, labels: &[(&str, &str)]) -> Instance {
    Instance {
        address: address.into(),
        identity: identity.into(),
        labels: labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        ..Instance::default()
    }
}

fn update(service: &str, instances: Vec<Instance>, settling: bool) -> EndpointUpdate {
    EndpointUpdate {
        full: false,
        services: vec![ServiceInstances {
            service: service.into(),
            instances,
            withdrawn: Vec::new(),
        }],
        settling,
    }
}

fn addresses(cluster: &Cluster) -> Vec<String> {
    cluster
        .endpoints()
        .iter()
        .map(|e| e.addr.to_string())
        .collect()
}

#[test]
fn clusters_take_the_instances_of_their_service_and_subset() {
    let discovery = Discovery::new();
    let all = cluster("{ name: hello, service: hello }");
    let v2 = cluster("{ name: hello-v2, service: hello, subset: { version: v2 } }");
    discovery.attach(&all);
    discovery.attach(&v2);
    assert_eq!(
        *discovery.wanted().borrow(),
        BTreeSet::from(["hello".to_owned()])
    );

    discovery.apply(&update(
        "hello",
        vec![
            instance("127.0.0.1:1", "spiffe://t/a", &[("version", "v1")]),
            instance("127.0.0.1:2", "spiffe://t/a", &[("version", "v2")]),
        ],
        false,
    ));
    assert_eq!(addresses(&all), ["127.0.0.1:1", "127.0.0.1:2"]);
    assert_eq!(addresses(&v2), ["127.0.0.1:2"]);
    assert_eq!(
        all.endpoints()[0].identity.as_deref(),
        Some("spiffe://t/a"),
        "endpoints carry the identity that registered them"
    );

    // A cluster made later starts with what is known.
    let later = cluster("{ name: again, service: hello }");
    discovery.attach(&later);
    assert_eq!(addresses(&later), ["127.0.0.1:1", "127.0.0.1:2"]);
}

#[test]
fn endpoints_that_stay_keep_their_state() {
    let discovery = Discovery::new();
    let hello = cluster("{ name: hello, service: hello }");
    discovery.attach(&hello);
    discovery.apply(&update(
        "hello",
        vec![instance("127.0.0.1:1", "a", &[])],
        false,
    ));
    let first = Arc::clone(&hello.endpoints()[0]);
    discovery.apply(&update(
        "hello",
        vec![
            instance("127.0.0.1:1", "a", &[]),
            instance("127.0.0.1:2", "a", &[]),
        ],
        false,
    ));
    assert!(Arc::ptr_eq(&first, &hello.endpoints()[0]));
    // Another identity at the same address is another endpoint.
    discovery.apply(&update(
        "hello",
        vec![instance("127.0.0.1:1", "b", &[])],
        false,
    ));
    assert!(!Arc::ptr_eq(&first, &hello.endpoints()[0]));
}

#[test]
fn while_the_control_service_settles_missing_instances_stay_unless_withdrawn() {
    let discovery = Discovery::new();
    let hello = cluster("{ name: hello, service: hello }");
    discovery.attach(&hello);
    discovery.apply(&update(
        "hello",
        vec![
            instance("127.0.0.1:1", "a", &[]),
            instance("127.0.0.1:2", "a", &[]),
            instance("127.0.0.1:3", "a", &[]),
        ],
        false,
    ));
    // A restarted control service has heard from one instance so far, and another one
    // deregistered since.
    let mut settling = update("hello", vec![instance("127.0.0.1:1", "a", &[])], true);
    settling.services[0].withdrawn = vec!["127.0.0.1:3".into()];
    discovery.apply(&settling);
    assert_eq!(addresses(&hello), ["127.0.0.1:1", "127.0.0.1:2"]);
    // Settled: what is missing really left.
    discovery.apply(&update(
        "hello",
        vec![instance("127.0.0.1:1", "a", &[])],
        false,
    ));
    assert_eq!(addresses(&hello), ["127.0.0.1:1"]);
}

#[test]
fn a_dropped_cluster_is_let_go() {
    let discovery = Discovery::new();
    let hello = cluster("{ name: hello, service: hello }");
    discovery.attach(&hello);
    drop(hello);
    discovery.apply(&update(
        "hello",
        vec![instance("127.0.0.1:1", "a", &[])],
        false,
    ));
    assert!(discovery.state().clusters["hello"].is_empty());
    assert_eq!(discovery.instances("hello").map(|i| i.len()), Some(1));
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn readiness_waits_for_first_answers_for_at_most_15s() {
    let discovery = Discovery::new();
    let hello = cluster("{ name: hello, service: hello }");
    discovery.attach(&hello);
    assert_eq!(discovery.awaiting_first_answers(), ["hello"]);
    // An answer, even "no instances", is an answer.
    discovery.apply(&update("hello", Vec::new(), false));
    assert!(discovery.awaiting_first_answers().is_empty());

    let unanswered = Discovery::new();
    unanswered.attach(&hello);
    tokio::time::sleep(Duration::from_secs(14)).await;
    assert_eq!(unanswered.awaiting_first_answers(), ["hello"]);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        unanswered.awaiting_first_answers().is_empty(),
        "ready anyway"
    );
}
