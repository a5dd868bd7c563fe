//! The real `sluice` binary: exit codes, error messages, and draining on SIGTERM.

use std::process::Command;
use std::time::Duration;

use crate::support::*;

#[test]
fn check_accepts_a_valid_config() {
    let file = write_config("valid", &simple_config("\"127.0.0.1:1\"", "", ""));
    let output = sluice()
        .args(["check", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("valid (1 listeners, 1 clusters)"),
        "{stdout}"
    );
}

#[test]
fn check_names_file_field_and_reason_and_exits_2() {
    let yaml = simple_config("\"127.0.0.1:1\"", "    lb_policy: fastest", "");
    let file = write_config("invalid", &yaml);
    let output = sluice()
        .args(["check", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    let expected = format!(
        "sluice: {}: clusters[0].lb_policy: unknown variant `fastest`",
        file.display()
    );
    assert!(stderr.starts_with(&expected), "{stderr}");

    let missing = sluice()
        .args(["check", "--config", "/nonexistent/sluice.yaml"])
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&missing.stderr)
            .contains("/nonexistent/sluice.yaml: cannot read the config file")
    );

    let usage = sluice().args(["proxy"]).output().unwrap();
    assert_eq!(
        usage.status.code(),
        Some(2),
        "missing --config is bad usage"
    );
}

#[test]
fn a_taken_port_is_a_runtime_failure_naming_the_listener() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap();
    let yaml =
        simple_config("\"127.0.0.1:1\"", "", "").replace("127.0.0.1:0", &address.to_string());
    let file = write_config("taken", &yaml);
    let output = sluice()
        .args(["proxy", "--config"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("listener \"main\": cannot bind {address}")),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests_then_exits_0() {
    let upstream = TestUpstream::start("app").await;
    let yaml = simple_config(&format!("\"{}\"", upstream.addr), "", "");
    let file = write_config("drain", &yaml);
    let mut proxy = SpawnedProxy::start(&file);
    let address = proxy.addr;
    let in_flight = tokio::spawn(async move { get(address, "/slow/700").await });
    // Let the slow request reach the upstream before the signal.
    let reached = eventually(Duration::from_secs(5), async || upstream.requests() == 1).await;
    assert!(reached);
    let pid = proxy.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );

    let reply = in_flight.await.unwrap();
    assert_eq!(
        reply.status, 200,
        "the in-flight request finished during the drain"
    );
    assert_eq!(reply.body, "slow\n");
    let status = tokio::task::block_in_place(|| proxy.child.wait()).unwrap();
    assert_eq!(status.code(), Some(0));
    assert!(
        tokio::net::TcpStream::connect(address).await.is_err(),
        "nothing accepts after the drain"
    );
}

#[test]
fn every_example_config_is_valid() {
    let examples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut checked = 0;
    for entry in std::fs::read_dir(&examples).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let output = sluice()
                .args(["check", "--config"])
                .arg(&path)
                .output()
                .unwrap();
            assert!(
                output.status.success(),
                "{}: {}",
                path.display(),
                String::from_utf8_lossy(&output.stderr)
            );
            checked += 1;
        }
    }
    assert!(checked >= 3, "found {checked} example configs");
}

#[test]
fn compiled_modules_are_cached_on_disk_across_restarts() {
    let cache =
        std::env::temp_dir().join(format!("sluice-e2e-{}-module-cache", std::process::id()));
    let _ = std::fs::remove_dir_all(&cache);
    let file = write_config("cache", &config_with_a_filter());
    let run = || {
        sluice()
            .env("SLUICE_MODULE_CACHE", &cache)
            .env("SLUICE_LOG", "sluice::wasm=debug")
            .args(["check", "--config"])
            .arg(&file)
            .output()
            .unwrap()
    };
    let first = run();
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let artifacts: Vec<_> = std::fs::read_dir(&cache)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(artifacts.len(), 1, "{artifacts:?}");
    assert!(artifacts[0].to_string_lossy().ends_with(".cwasm"));

    let second = run();
    assert!(second.status.success());
    let log = String::from_utf8_lossy(&second.stderr);
    assert!(
        log.contains("loaded precompiled module from the cache"),
        "{log}"
    );
}

#[test]
fn wasm_filters_load_under_an_address_space_limit() {
    // The instance pool reserves terabytes of address space up front; under `ulimit -v` that
    // fails, and the VMs are allocated one by one instead of the filter failing to load.
    let file = write_config("address-limit", &config_with_a_filter());
    // 64 GiB: room for one VM's memory reservation, not for the pool's.
    let script = format!(
        "ulimit -v 67108864 && exec \"$0\" check --config '{}'",
        file.display()
    );
    let output = Command::new("sh")
        .env("SLUICE_LOG", "info")
        .arg("-c")
        .arg(script)
        .arg(sluice().get_program())
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{log}");
    assert!(
        log.contains("cannot reserve the Wasm instance pool"),
        "{log}"
    );
}

#[test]
fn a_perf_map_names_the_guest_functions_only_when_asked() {
    // `perf` and benches/instructions.sh name the code wasmtime compiled through
    // /tmp/perf-<pid>.map, which the proxy writes only with SLUICE_WASM_PERFMAP=1.
    let file = write_config("perf-map", &config_with_a_filter());
    let check = |perf_map: Option<&str>| {
        let mut command = sluice();
        match perf_map {
            Some(value) => command.env("SLUICE_WASM_PERFMAP", value),
            // Not inherited from whoever runs the tests.
            None => command.env_remove("SLUICE_WASM_PERFMAP"),
        };
        // File times come from the kernel's coarse clock, which can lag this one by a few ms.
        let started = std::time::SystemTime::now() - Duration::from_secs(1);
        let child = command
            .args(["check", "--config"])
            .arg(&file)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let map = std::path::PathBuf::from(format!("/tmp/perf-{}.map", child.id()));
        let output = child.wait_with_output().unwrap();
        // A map older than this run is another process's that had the same pid.
        let fresh = std::fs::metadata(&map)
            .and_then(|m| m.modified())
            .is_ok_and(|modified| modified >= started);
        let written = fresh.then(|| std::fs::read_to_string(&map).ok()).flatten();
        let _ = std::fs::remove_file(&map);
        let log = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(0), "{log}");
        written
    };

    let written = check(Some("1")).expect("SLUICE_WASM_PERFMAP=1 writes the perf map");
    // One line per compiled function: start address, size (hex), name.
    let callback = written
        .lines()
        .find(|line| line.ends_with(" proxy_on_request_headers"))
        .unwrap_or_else(|| panic!("the filter's callbacks are named:\n{written}"));
    let hex = |field: &str| u64::from_str_radix(field.trim_start_matches("0x"), 16).is_ok();
    let fields: Vec<&str> = callback.split(' ').collect();
    assert!(hex(fields[0]) && hex(fields[1]), "{callback}");
    assert_eq!(check(None), None, "no perf map unless asked");
    assert_eq!(check(Some("0")), None, "no perf map unless asked");
}

/// A valid config whose listener runs the `headers` fixture filter.
fn config_with_a_filter() -> String {
    let filters = format!(
        "[{{ name: probe, module: \"{}\" }}]",
        fixture("headers").display()
    );
    simple_config("\"127.0.0.1:1\"", "", "").replace(
        "    routes:\n",
        &format!("    filters: {filters}\n    routes:\n"),
    )
}
