//! The scripted upstream the harness puts behind the proxy: it answers each request with
//! the next scripted answer (status, headers, body, delay, or a reset) and records what it
//! was sent.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

/// One scripted answer of the upstream.
#[derive(Debug, Clone)]
pub struct Scripted {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
    delay: Duration,
    reset: bool,
}

impl Scripted {
    pub fn status(status: u16) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: String::new(),
            delay: Duration::ZERO,
            reset: false,
        }
    }

    /// Closes the connection without answering.
    pub fn reset() -> Self {
        Self {
            reset: true,
            ..Self::status(0)
        }
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    pub fn body(mut self, body: &str) -> Self {
        self.body = body.to_owned();
        self
    }

    /// Answers after `delay`.
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }
}

/// A request as the upstream received it.
#[derive(Debug, Clone)]
pub struct SeenRequest {
    pub method: String,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// An HTTP/1.1 server on 127.0.0.1 that answers from a script, in order, then `200 ok` once
/// the script runs out; it records every request.
#[derive(Clone)]
pub struct ScriptedUpstream {
    address: SocketAddr,
    state: Arc<Mutex<UpstreamState>>,
}

#[derive(Default)]
struct UpstreamState {
    script: VecDeque<Scripted>,
    seen: Vec<SeenRequest>,
}

impl ScriptedUpstream {
    pub async fn start() -> Result<Self, String> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| format!("cannot bind the scripted upstream: {e}"))?;
        let address = listener.local_addr().map_err(|e| e.to_string())?;
        let upstream = Self {
            address,
            state: Arc::default(),
        };
        let serving = upstream.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let upstream = serving.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        let upstream = upstream.clone();
                        async move { upstream.answer(request).await }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(upstream)
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Appends answers to the script.
    pub fn script(&self, answers: impl IntoIterator<Item = Scripted>) {
        self.lock().script.extend(answers);
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<SeenRequest> {
        self.lock().seen.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, UpstreamState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    async fn answer(
        &self,
        request: Request<hyper::body::Incoming>,
    ) -> Result<Response<Full<Bytes>>, std::io::Error> {
        let (parts, body) = request.into_parts();
        // The whole body first: a keep-alive connection stays usable, and tests see it.
        let body = body
            .collect()
            .await
            .map(http_body_util::Collected::to_bytes)
            .unwrap_or_default();
        let next = {
            let mut state = self.lock();
            state.seen.push(SeenRequest {
                method: parts.method.to_string(),
                path: parts.uri.path().to_owned(),
                headers: parts.headers,
                body,
            });
            state.script.pop_front()
        };
        let next = next.unwrap_or_else(|| Scripted::status(200).body("ok\n"));
        tokio::time::sleep(next.delay).await;
        if next.reset {
            return Err(std::io::Error::other("scripted reset"));
        }
        let mut response = Response::builder().status(next.status);
        for (name, value) in &next.headers {
            response = response.header(name, value);
        }
        response
            .body(Full::new(Bytes::from(next.body)))
            .map_err(std::io::Error::other)
    }
}
