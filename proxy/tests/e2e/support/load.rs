//! A steady, bounded load for tests of changes under traffic: a few keep-alive connections
//! sending `GET /` back to back until stopped, counting what passed a check and what did not
//! (a wrong reply, or a request that failed on the wire).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

pub struct SteadyLoad {
    stop: Arc<AtomicBool>,
    served: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
    clients: Vec<tokio::task::JoinHandle<()>>,
}

/// What the load saw once stopped.
#[derive(Debug)]
pub struct LoadOutcome {
    pub served: usize,
    pub failed: usize,
}

impl SteadyLoad {
    /// Starts `connections` clients; a reply counts as served when `ok` says so.
    pub fn start(
        addr: SocketAddr,
        connections: usize,
        ok: fn(&http::response::Parts) -> bool,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (served, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let clients = (0..connections)
            .map(|_| {
                let (stop, served, failed) = (stop.clone(), served.clone(), failed.clone());
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        // A connection lasts until it fails; a failure is counted, not fatal.
                        let Ok(stream) = TcpStream::connect(addr).await else {
                            failed.fetch_add(1, Ordering::Relaxed);
                            continue;
                        };
                        let Ok((mut sender, connection)) =
                            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await
                        else {
                            failed.fetch_add(1, Ordering::Relaxed);
                            continue;
                        };
                        tokio::spawn(connection);
                        while !stop.load(Ordering::Relaxed) {
                            let request = Request::get("/")
                                .header("host", "load.test")
                                .body(Full::<Bytes>::default())
                                .unwrap();
                            let passed = match sender.send_request(request).await {
                                Ok(response) => {
                                    let (parts, body) = response.into_parts();
                                    body.collect().await.is_ok() && ok(&parts)
                                }
                                Err(_) => false,
                            };
                            let counter = if passed { &served } else { &failed };
                            counter.fetch_add(1, Ordering::Relaxed);
                            if sender.ready().await.is_err() {
                                break;
                            }
                        }
                    }
                })
            })
            .collect();
        Self {
            stop,
            served,
            failed,
            clients,
        }
    }

    pub fn served(&self) -> usize {
        self.served.load(Ordering::Relaxed)
    }

    pub async fn stop(self) -> LoadOutcome {
        self.stop.store(true, Ordering::Relaxed);
        for client in self.clients {
            client.await.unwrap();
        }
        LoadOutcome {
            served: self.served.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
        }
    }
}
