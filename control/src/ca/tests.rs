use super::*;

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sluice-ca-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

#[test]
fn the_ca_survives_a_restart_and_names_workloads_by_spiffe_id() {
    let dir = temp_dir("reopen");
    let first = MeshCa::open(&dir, "mesh.test").unwrap();
    let bundle = first.trust_bundle().to_owned();
    let again = MeshCa::open(&dir, "mesh.test").unwrap();
    assert_eq!(again.trust_bundle(), bundle, "the same CA after a restart");

    let key = KeyPair::generate().unwrap();
    let issued = again
        .issue(
            "ns/shop/sa/checkout",
            key.public_key_raw(),
            Duration::from_secs(3600),
        )
        .unwrap();
    assert_eq!(issued.spiffe_id, "spiffe://mesh.test/ns/shop/sa/checkout");
    assert!(issued.chain_pem.ends_with(&bundle), "leaf, then the CA");
    assert_eq!(issued.chain_pem.matches("BEGIN CERTIFICATE").count(), 2);
}

#[test]
fn another_trust_domain_or_a_lost_certificate_is_handled() {
    let dir = temp_dir("domain");
    let first = MeshCa::open(&dir, "mesh.test").unwrap();
    let error = MeshCa::open(&dir, "other.test")
        .err()
        .expect("refused")
        .to_string();
    assert!(
        error.contains("this CA is for trust domain \"mesh.test\""),
        "{error}"
    );
    // A crash after the key was written: the certificate is made again from it.
    std::fs::remove_file(dir.join("ca/ca.pem")).unwrap();
    let again = MeshCa::open(&dir, "mesh.test").unwrap();
    assert!(!again.trust_bundle().is_empty());
    drop(first);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join("ca/ca.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}

#[test]
fn bad_names_and_keys_are_refused() {
    let dir = temp_dir("refuse");
    assert!(MeshCa::open(&dir, "Mesh Test").is_err());
    let ca = MeshCa::open(&dir, "mesh.test").unwrap();
    let key = KeyPair::generate().unwrap();
    for workload in ["", "a//b", "../etc", "a b", "ns/shop/"] {
        assert!(
            ca.issue(workload, key.public_key_raw(), Duration::from_secs(60))
                .is_err(),
            "{workload:?}"
        );
    }
    assert!(ca.issue("web", &[4; 10], Duration::from_secs(60)).is_err());
}
