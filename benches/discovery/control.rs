//! The control service as a separate process, as a real deployment runs it: started from the
//! release binary with a data dir of its own, measured through /proc, killed at the end.

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use sluice_control::proto::CreateJoinTokenRequest;

pub struct ControlProcess {
    pub url: String,
    child: Child,
    _data: tempdir::Folder,
}

mod tempdir {
    /// A folder removed when dropped.
    pub struct Folder(pub std::path::PathBuf);

    impl Drop for Folder {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

impl ControlProcess {
    pub fn start() -> Self {
        let binary = sluice_binary();
        let data =
            std::env::temp_dir().join(format!("sluice-discovery-bench-{}", std::process::id()));
        let mut child = Command::new(&binary)
            .args(["control", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(&data)
            .env("SLUICE_LOG", "warn")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{}: {e}", binary.display()));
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let url = line
            .trim()
            .strip_prefix("control service listening on ")
            .unwrap_or_else(|| panic!("unexpected: {line}"))
            .to_owned();
        Self {
            child,
            url,
            _data: tempdir::Folder(data),
        }
    }

    /// User plus system CPU time so far.
    pub fn cpu(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap();
        // Fields after the command name, which is in parentheses and may hold spaces.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .unwrap()
            .1
            .split_whitespace()
            .collect();
        let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        Duration::from_millis(ticks * 10)
    }

    pub fn rss_mib(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let kib: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|k| k.parse().ok())
            .unwrap();
        kib / 1024.0
    }
}

impl Drop for ControlProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `SLUICE_BIN`, else the release build in this tree (built if missing).
fn sluice_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("SLUICE_BIN") {
        return PathBuf::from(path);
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let binary = root.join("target/release/sluice");
    if !binary.exists() {
        println!("building the release sluice binary...");
        let built = Command::new("cargo")
            .args(["build", "--release", "-p", "sluice"])
            .current_dir(&root)
            .status()
            .unwrap();
        assert!(built.success(), "cargo build --release -p sluice failed");
    }
    binary
}

pub async fn create_token(url: &str) -> String {
    let mut admin = sluice_control::connect_identity_admin(url, None)
        .await
        .unwrap();
    admin
        .create_join_token(CreateJoinTokenRequest {
            workload: "ns/bench/sa/app".into(),
            services: Vec::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .token
}
