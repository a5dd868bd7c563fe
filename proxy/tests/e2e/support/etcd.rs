//! A real etcd cluster on loopback: Debian's `etcd-server`, which `.ci/run` installs. Members
//! can be killed, stopped all together and started again on their data, as a lost machine
//! or an outage would. Self-contained: the replica benchmark includes this file too.

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

const ETCD: &str = "etcd";

pub struct EtcdCluster {
    members: Vec<Member>,
    /// `--initial-cluster`: every member's name and peer URL.
    initial_cluster: String,
    tls: Option<EtcdTlsFiles>,
}

/// TLS for the members' client port, with client certificates required (etcd's
/// `--client-cert-auth`): the CA both sides chain to, the members' certificate (for
/// 127.0.0.1) and a client's.
#[derive(Clone)]
pub struct EtcdTlsFiles {
    pub ca: PathBuf,
    pub server: (PathBuf, PathBuf),
    pub client: (PathBuf, PathBuf),
}

struct Member {
    name: String,
    data_dir: PathBuf,
    client: SocketAddr,
    peer: SocketAddr,
    child: Option<Child>,
}

impl EtcdCluster {
    /// `size` members on free loopback ports, started and healthy; `None` (after saying
    /// why) where etcd is not installed and cannot be, outside CI. In CI a missing etcd
    /// fails the test: `.ci/run` installs it.
    pub async fn start(name: &str, size: usize) -> Option<Self> {
        Self::start_with(name, size, None).await
    }

    /// The same, serving clients over TLS only.
    pub async fn start_tls(name: &str, size: usize, tls: EtcdTlsFiles) -> Option<Self> {
        Self::start_with(name, size, Some(tls)).await
    }

    async fn start_with(name: &str, size: usize, tls: Option<EtcdTlsFiles>) -> Option<Self> {
        if Command::new(ETCD)
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_err()
        {
            assert!(
                std::env::var_os("CI").is_none(),
                "etcd is not installed: `bash .ci/run` installs Debian's etcd-server"
            );
            eprintln!(
                "skipping: etcd is not installed (apt-get install etcd-server, or run `bash .ci/run`)"
            );
            return None;
        }
        let folder =
            std::env::temp_dir().join(format!("sluice-etcd-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&folder);
        std::fs::create_dir_all(&folder).unwrap();
        let members: Vec<Member> = (0..size)
            .map(|index| Member {
                name: format!("m{index}"),
                data_dir: folder.join(format!("m{index}")),
                client: free_port(),
                peer: free_port(),
                child: None,
            })
            .collect();
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}=http://{}", m.name, m.peer))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = Self {
            members,
            initial_cluster,
            tls,
        };
        for index in 0..size {
            cluster.start_member(index);
        }
        cluster.wait_healthy(Duration::from_secs(30)).await;
        Some(cluster)
    }

    /// Each member's client address (the replica bench reads their metrics there).
    #[allow(dead_code)]
    pub fn clients(&self) -> Vec<SocketAddr> {
        self.members.iter().map(|m| m.client).collect()
    }

    /// `--store` for `sluice control`.
    pub fn store_url(&self) -> String {
        let members: Vec<String> = self.members.iter().map(|m| m.client.to_string()).collect();
        format!("etcd://{}", members.join(","))
    }

    fn start_member(&mut self, index: usize) {
        let initial_cluster = self.initial_cluster.clone();
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let mut tls_flags = Vec::new();
        if let Some(tls) = &self.tls {
            tls_flags.push(format!("--cert-file={}", tls.server.0.display()));
            tls_flags.push(format!("--key-file={}", tls.server.1.display()));
            tls_flags.push(format!("--trusted-ca-file={}", tls.ca.display()));
            tls_flags.push("--client-cert-auth=true".to_owned());
        }
        let member = &mut self.members[index];
        let log = std::fs::File::create(member.data_dir.with_extension("log")).unwrap();
        let child = Command::new(ETCD)
            .arg("--name")
            .arg(&member.name)
            .arg("--data-dir")
            .arg(&member.data_dir)
            .arg(format!("--listen-client-urls={scheme}://{}", member.client))
            .arg(format!(
                "--advertise-client-urls={scheme}://{}",
                member.client
            ))
            .args(&tls_flags)
            .arg(format!("--listen-peer-urls=http://{}", member.peer))
            .arg(format!(
                "--initial-advertise-peer-urls=http://{}",
                member.peer
            ))
            .arg(format!("--initial-cluster={initial_cluster}"))
            .args([
                "--initial-cluster-state=new",
                "--initial-cluster-token=sluice-test",
            ])
            // Elections in a fraction of a second, so tests do not wait on the defaults.
            .args(["--heartbeat-interval=50", "--election-timeout=500"])
            .args(["--logger=zap", "--log-level=warn"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        member.child = Some(child);
    }

    /// SIGKILL to one member, as a lost machine.
    pub fn kill(&mut self, index: usize) {
        if let Some(mut child) = self.members[index].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Every member killed: the store is gone, its data kept.
    pub fn kill_all(&mut self) {
        for index in 0..self.members.len() {
            self.kill(index);
        }
    }

    /// Starts again every member that is down, on its data, and waits until all are healthy.
    pub async fn restart_stopped(&mut self) {
        for index in 0..self.members.len() {
            if self.members[index].child.is_none() {
                self.start_member(index);
            }
        }
        self.wait_healthy(Duration::from_secs(30)).await;
    }

    async fn wait_healthy(&self, within: Duration) {
        let deadline = Instant::now() + within;
        for member in self.members.iter().filter(|m| m.child.is_some()) {
            while !healthy(member.client, self.tls.as_ref()).await {
                assert!(
                    Instant::now() < deadline,
                    "etcd member {} never became healthy; its log: {}",
                    member.name,
                    std::fs::read_to_string(member.data_dir.with_extension("log"))
                        .unwrap_or_default()
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        self.kill_all();
        if let Some(folder) = self.members.first().and_then(|m| m.data_dir.parent()) {
            let _ = std::fs::remove_dir_all(folder);
        }
    }
}

/// etcd's `/health`: true once the member has a leader and answers reads.
async fn healthy(client: SocketAddr, tls: Option<&EtcdTlsFiles>) -> bool {
    if let Some(tls) = tls {
        // curl, which `.ci/run` installs, speaks TLS with a client certificate.
        let mut curl = Command::new("curl");
        curl.args(["-s", "--max-time", "2", "--cacert"])
            .arg(&tls.ca)
            .arg("--cert")
            .arg(&tls.client.0)
            .arg("--key")
            .arg(&tls.client.1)
            .arg(format!("https://{client}/health"));
        let asked = tokio::task::spawn_blocking(move || curl.output()).await;
        return asked.is_ok_and(|out| {
            out.is_ok_and(|out| String::from_utf8_lossy(&out.stdout).contains(r#""health":"true""#))
        });
    }
    let ask = async {
        let mut stream = TcpStream::connect(client).await.ok()?;
        let request =
            format!("GET /health HTTP/1.1\r\nHost: {client}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut reply = String::new();
        stream.read_to_string(&mut reply).await.ok()?;
        Some(reply.contains(r#""health":"true""#))
    };
    tokio::time::timeout(Duration::from_secs(2), ask)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}

fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}
