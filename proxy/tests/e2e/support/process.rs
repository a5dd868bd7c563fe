//! The real `sluice` binary as a child process: start it on a config file, learn its ports
//! from its log, read its log and memory use, kill it when the test ends.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub fn sluice() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_sluice"));
    command.env("SLUICE_LOG", "info");
    command
}

/// A fresh temp folder for one test.
pub fn temp_folder(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sluice-e2e-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A config file in a fresh temp folder.
pub fn write_config(name: &str, yaml: &str) -> PathBuf {
    let file = temp_folder(name).join("proxy.yaml");
    std::fs::write(&file, yaml).unwrap();
    file
}

/// Replaces `file` the way deploy tools do: write a sibling, rename it over.
pub fn replace_file(file: &Path, contents: &[u8]) {
    let staged = file.with_extension("staged");
    std::fs::write(&staged, contents).unwrap();
    std::fs::rename(&staged, file).unwrap();
}

pub struct SpawnedProxy {
    pub child: Child,
    /// The listener named `main`.
    pub addr: SocketAddr,
    log: Arc<Mutex<String>>,
}

impl SpawnedProxy {
    /// Runs `sluice proxy --config FILE` and waits until it listens and follows the file.
    pub fn start(config: &Path) -> Self {
        Self::start_with(config, &[])
    }

    /// The same with more arguments.
    pub fn start_with(config: &Path, arguments: &[&str]) -> Self {
        Self::start_listening(config, arguments, "main")
    }

    /// The same, with `addr` the address of the listener named `listener`.
    pub fn start_listening(config: &Path, arguments: &[&str], listener: &str) -> Self {
        let marker = format!("listener={listener} address=");
        let mut child = sluice()
            .args(["proxy", "--config"])
            .arg(config)
            .args(arguments)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (address_tx, address_rx) = std::sync::mpsc::channel();
        let stderr = BufReader::new(child.stderr.take().unwrap());
        std::thread::spawn({
            let log = Arc::clone(&log);
            move || {
                let mut listening = None;
                for line in stderr.lines().map_while(Result::ok) {
                    if let Some(address) = address_after(&line, &marker) {
                        listening = Some(address);
                    }
                    if line.contains("watching the config") {
                        let _ = address_tx.send(listening);
                    }
                    let mut log = log.lock().unwrap();
                    log.push_str(&line);
                    log.push('\n');
                }
            }
        });
        let addr = address_rx
            .recv_timeout(Duration::from_secs(30))
            .ok()
            .flatten()
            .unwrap_or_else(|| panic!("sluice never listened:\n{}", log.lock().unwrap()));
        Self { child, addr, log }
    }

    /// Everything it logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Its admin endpoint, as it logged it.
    pub fn admin(&self) -> Option<SocketAddr> {
        self.log()
            .lines()
            .find_map(|line| address_after(line, "admin endpoint listening address="))
    }

    /// Resident memory, in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kib| kib.parse().ok())
            .unwrap()
    }
}

impl SpawnedProxy {
    /// SIGTERM, then waits (at most `within`) for it to exit; its exit status.
    pub async fn terminate(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().ok()?;
        let step = Duration::from_millis(20);
        for _ in 0..=within.as_millis() / step.as_millis() {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            tokio::time::sleep(step).await;
        }
        None
    }
}

impl Drop for SpawnedProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `sluice control` on a free loopback port; killed when dropped.
pub struct SpawnedControl {
    child: Child,
    pub url: String,
    log: Arc<Mutex<String>>,
}

impl SpawnedControl {
    pub fn start(data_dir: &Path) -> Self {
        Self::start_with(data_dir, "127.0.0.1:0", &[])
    }

    /// On `listen`, with more arguments.
    pub fn start_with(data_dir: &Path, listen: &str, arguments: &[&str]) -> Self {
        let mut child = sluice()
            .args(["control", "--listen", listen, "--data-dir"])
            .arg(data_dir)
            .args(arguments)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let stderr = BufReader::new(child.stderr.take().unwrap());
        std::thread::spawn({
            let log = Arc::clone(&log);
            move || {
                for line in stderr.lines().map_while(Result::ok) {
                    let mut log = log.lock().unwrap();
                    log.push_str(&line);
                    log.push('\n');
                }
            }
        });
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let url = line
            .strip_prefix("control service listening on ")
            .unwrap_or_else(|| panic!("unexpected first line from sluice control: {line:?}"))
            .trim()
            .to_owned();
        Self { child, url, log }
    }

    /// Everything it logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// The SHA-256 of its mesh CA, as it printed it at start.
    pub fn ca_digest(&self) -> String {
        for _ in 0..100 {
            if let Some(digest) = self
                .log()
                .split("mesh CA sha256:")
                .nth(1)
                .and_then(|rest| rest.get(..64))
            {
                return digest.to_owned();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "sluice control never printed its CA digest:\n{}",
            self.log()
        );
    }
}

impl SpawnedControl {
    /// Ends it as a crash or a lost machine would: SIGKILL.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for SpawnedControl {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn address_after(line: &str, marker: &str) -> Option<SocketAddr> {
    line.split(marker)
        .nth(1)?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}
