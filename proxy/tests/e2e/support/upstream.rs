//! A real HTTP upstream (hyper, HTTP/1.1 and h2c) whose behaviour is chosen by the request
//! path, so tests can make it slow, flaky, or die mid-response on demand.
//!
//! | path | answer |
//! |---|---|
//! | `/status/<code>` | that status |
//! | `/slow/<ms>` | 200 after the delay |
//! | `/bytes/<n>` | 200 with a body of `n` bytes, sent in 64 KiB chunks as the proxy takes them |
//! | `/die-mid-body` | headers and one chunk, then the connection drops |
//! | `/stall-body` | headers and one chunk, then silence |
//! | `/trailers` | body plus `grpc-status: 0` trailers |
//! | `/grpc.Echo/Say` | unary gRPC: echoes the message; `/grpc.Echo/<other>`: status 7 |
//! | `/grpc.Chat/Echo` | bidirectional gRPC: echoes each message as it arrives; `/grpc.Chat/<other>`: status 7, trailers-only |
//! | `/upgrade` | `101` then echoes bytes on the raw connection |
//! | `/healthz` | the status set with [`TestUpstream::set_health`] |
//! | anything else | 200 echo: method, URI, version, headers, body (read fully) |
//!
//! Every response names the upstream in `x-upstream`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

pub struct TestUpstream {
    pub addr: SocketAddr,
    pub name: &'static str,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

struct State {
    name: &'static str,
    health: AtomicU16,
    connections: AtomicUsize,
    requests: AtomicUsize,
}

impl TestUpstream {
    pub async fn start(name: &'static str) -> Self {
        let socket = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let state = Arc::new(State {
            name,
            health: AtomicU16::new(200),
            connections: AtomicUsize::new(0),
            requests: AtomicUsize::new(0),
        });
        let serving = Arc::clone(&state);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = socket.accept().await else {
                    continue;
                };
                serving.connections.fetch_add(1, Ordering::SeqCst);
                let state = Arc::clone(&serving);
                tokio::spawn(async move {
                    let service = service_fn(move |request| {
                        let state = Arc::clone(&state);
                        async move { Ok::<_, Infallible>(respond(&state, request).await) }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self {
            addr,
            name,
            state,
            task,
        }
    }

    pub fn set_health(&self, status: u16) {
        self.state.health.store(status, Ordering::SeqCst);
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.state.connections.load(Ordering::SeqCst)
    }

    /// Requests served so far, health checks excluded.
    pub fn requests(&self) -> usize {
        self.state.requests.load(Ordering::SeqCst)
    }
}

impl Drop for TestUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type TestBody = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

async fn respond(state: &State, mut request: Request<Incoming>) -> Response<TestBody> {
    let path = request.uri().path().to_owned();
    if path != "/healthz" {
        state.requests.fetch_add(1, Ordering::SeqCst);
    }
    let mut response = if let Some(code) = path.strip_prefix("/status/") {
        let mut response = full("status\n");
        *response.status_mut() = StatusCode::from_u16(code.parse().unwrap()).unwrap();
        response
    } else if let Some(ms) = path.strip_prefix("/slow/") {
        tokio::time::sleep(Duration::from_millis(ms.parse().unwrap())).await;
        full("slow\n")
    } else if let Some(size) = path.strip_prefix("/bytes/") {
        let mut left: usize = size.parse().unwrap();
        let (tx, body) = ChannelBody::new();
        tokio::spawn(async move {
            while left > 0 {
                let chunk = left.min(64 * 1024);
                left -= chunk;
                let frame = Frame::data(Bytes::from(vec![b'x'; chunk]));
                if tx.send(Ok(frame)).await.is_err() {
                    break;
                }
            }
        });
        Response::new(body.boxed())
    } else if path == "/healthz" {
        let mut response = full("health\n");
        *response.status_mut() = StatusCode::from_u16(state.health.load(Ordering::SeqCst)).unwrap();
        response
    } else if path == "/die-mid-body" {
        let (tx, body) = ChannelBody::new();
        tokio::spawn(async move {
            tx.send(Ok(Frame::data(Bytes::from_static(b"first chunk\n"))))
                .await
                .ok();
            tokio::time::sleep(Duration::from_millis(50)).await;
            tx.send(Err(std::io::Error::other("upstream died")))
                .await
                .ok();
        });
        Response::new(body.boxed())
    } else if path == "/stall-body" {
        let (tx, body) = ChannelBody::new();
        tokio::spawn(async move {
            tx.send(Ok(Frame::data(Bytes::from_static(b"first chunk\n"))))
                .await
                .ok();
            tokio::time::sleep(Duration::from_secs(30)).await;
            drop(tx);
        });
        Response::new(body.boxed())
    } else if path == "/trailers" {
        let (tx, body) = ChannelBody::new();
        tokio::spawn(async move {
            tx.send(Ok(Frame::data(Bytes::from_static(b"grpc-ish body"))))
                .await
                .ok();
            let mut trailers = http::HeaderMap::new();
            trailers.insert("grpc-status", "0".parse().unwrap());
            trailers.insert("grpc-message", "fine".parse().unwrap());
            tx.send(Ok(Frame::trailers(trailers))).await.ok();
        });
        let mut response = Response::new(body.boxed());
        response
            .headers_mut()
            .insert("content-type", "application/grpc".parse().unwrap());
        response
    } else if let Some(method) = path.strip_prefix("/grpc.Echo/") {
        // Unary gRPC: `Say` echoes the (framed) message, anything else fails with status 7.
        let framed = request
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let succeed = method == "Say";
        let (tx, body) = ChannelBody::new();
        tokio::spawn(async move {
            if succeed {
                tx.send(Ok(Frame::data(framed))).await.ok();
            }
            let mut trailers = http::HeaderMap::new();
            let (status, message) = if succeed {
                ("0", "ok")
            } else {
                ("7", "denied")
            };
            trailers.insert("grpc-status", status.parse().unwrap());
            trailers.insert("grpc-message", message.parse().unwrap());
            tx.send(Ok(Frame::trailers(trailers))).await.ok();
        });
        let mut response = Response::new(body.boxed());
        response
            .headers_mut()
            .insert("content-type", "application/grpc".parse().unwrap());
        response
    } else if let Some(method) = path.strip_prefix("/grpc.Chat/") {
        grpc_chat(method, request)
    } else if path == "/upgrade" {
        let upgrade = hyper::upgrade::on(&mut request);
        tokio::spawn(async move {
            let Ok(upgraded) = upgrade.await else { return };
            let mut io = TokioIo::new(upgraded);
            let mut buffer = [0u8; 1024];
            while let Ok(n) = io.read(&mut buffer).await {
                if n == 0 || io.write_all(&buffer[..n]).await.is_err() {
                    break;
                }
            }
        });
        let mut response = full("");
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        response
            .headers_mut()
            .insert("connection", "upgrade".parse().unwrap());
        response
            .headers_mut()
            .insert("upgrade", "echo".parse().unwrap());
        response
    } else {
        echo(request).await
    };
    response
        .headers_mut()
        .insert("x-upstream", state.name.parse().unwrap());
    response
}

async fn echo(request: Request<Incoming>) -> Response<TestBody> {
    let (parts, body) = request.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let mut text = format!("{} {} {:?}\n", parts.method, parts.uri, parts.version);
    for (name, value) in &parts.headers {
        text.push_str(&format!(
            "{}: {}\n",
            name,
            value.to_str().unwrap_or("<binary>")
        ));
    }
    text.push('\n');
    let mut bytes = text.into_bytes();
    bytes.extend_from_slice(&body);
    Response::new(
        http_body_util::Full::new(Bytes::from(bytes))
            .map_err(|e| match e {})
            .boxed(),
    )
}

/// Bidirectional gRPC. `Echo` answers at once with initial metadata (`x-chat: open`), then
/// each message as it arrives with `echo:<message>`, and when the client ends its side,
/// trailers with status 0, `bye` and `x-count`. Any other method is a trailers-only reply
/// with status 7.
fn grpc_chat(method: &str, request: Request<Incoming>) -> Response<TestBody> {
    if method != "Echo" {
        let mut response = full("");
        for (name, value) in [
            ("content-type", "application/grpc"),
            ("grpc-status", "7"),
            ("grpc-message", "denied"),
        ] {
            response.headers_mut().insert(name, value.parse().unwrap());
        }
        return response;
    }
    let caller = request.headers().get("x-caller").cloned();
    let (tx, body) = ChannelBody::new();
    tokio::spawn(async move {
        let mut incoming = request.into_body();
        let mut buffered = Vec::new();
        let mut count = 0;
        while let Some(Ok(frame)) = incoming.frame().await {
            let Ok(data) = frame.into_data() else {
                continue;
            };
            buffered.extend_from_slice(&data);
            while buffered.len() >= 5 {
                let length = u32::from_be_bytes(buffered[1..5].try_into().unwrap()) as usize;
                if buffered.len() < 5 + length {
                    break;
                }
                let message: Vec<u8> = buffered.drain(..5 + length).skip(5).collect();
                count += 1;
                let reply = [b"echo:".as_slice(), &message].concat();
                let mut framed = vec![0];
                framed.extend_from_slice(&(reply.len() as u32).to_be_bytes());
                framed.extend_from_slice(&reply);
                if tx.send(Ok(Frame::data(Bytes::from(framed)))).await.is_err() {
                    return;
                }
            }
        }
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", "0".parse().unwrap());
        trailers.insert("grpc-message", "bye".parse().unwrap());
        trailers.insert("x-count", count.to_string().parse().unwrap());
        tx.send(Ok(Frame::trailers(trailers))).await.ok();
    });
    let mut response = Response::new(body.boxed());
    let headers = response.headers_mut();
    headers.insert("content-type", "application/grpc".parse().unwrap());
    headers.insert("x-chat", "open".parse().unwrap());
    if let Some(caller) = caller {
        headers.insert("x-caller-seen", caller);
    }
    response
}

fn full(text: &'static str) -> Response<TestBody> {
    Response::new(
        http_body_util::Full::new(Bytes::from_static(text.as_bytes()))
            .map_err(|e| match e {})
            .boxed(),
    )
}

/// A body fed frame by frame from a channel; an `Err` frame aborts the response.
pub struct ChannelBody(mpsc::Receiver<Result<Frame<Bytes>, std::io::Error>>);

impl ChannelBody {
    pub fn new() -> (mpsc::Sender<Result<Frame<Bytes>, std::io::Error>>, Self) {
        let (tx, rx) = mpsc::channel(8);
        (tx, Self(rx))
    }
}

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.get_mut().0.poll_recv(cx)
    }
}
