//! Clients for the tests: a hyper client (HTTP/1.1 or h2c, one connection per call unless a
//! connection is reused explicitly) and raw-socket helpers for malformed input.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What a test looks at in a response.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
    pub trailers: Option<HeaderMap>,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The value of `name:` in an echo body (headers the upstream received).
    pub fn echoed(&self, name: &str) -> Option<&str> {
        let prefix = format!("{name}: ");
        self.body
            .lines()
            .find_map(|line| line.strip_prefix(prefix.as_str()))
    }
}

pub async fn get(addr: SocketAddr, path: &str) -> Reply {
    send(
        addr,
        Request::get(path)
            .header("host", "test.local")
            .body(Full::default())
            .unwrap(),
    )
    .await
}

/// Sends one request on a fresh HTTP/1.1 connection.
pub async fn send(addr: SocketAddr, request: Request<Full<Bytes>>) -> Reply {
    KeptConnection::open(addr).await.send(request).await
}

/// One HTTP/1.1 connection kept open for several requests.
pub struct KeptConnection(hyper::client::conn::http1::SendRequest<Full<Bytes>>);

impl KeptConnection {
    pub async fn open(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).await.unwrap();
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(connection);
        Self(sender)
    }

    pub async fn send(&mut self, request: Request<Full<Bytes>>) -> Reply {
        self.0.ready().await.unwrap();
        let response = self.0.send_request(request).await.unwrap();
        collect(response).await
    }

    pub async fn get(&mut self, path: &str) -> Reply {
        let request = Request::get(path).header("host", "test.local");
        self.send(request.body(Full::default()).unwrap()).await
    }
}

/// Sends one request on a fresh HTTP/1.1 connection and returns the response before its body
/// is read, for tests about how a body ends.
pub async fn send_streaming(addr: SocketAddr, path: &str) -> http::Response<hyper::body::Incoming> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    sender
        .send_request(Request::get(path).body(Full::<Bytes>::default()).unwrap())
        .await
        .unwrap()
}

/// A GET with the given headers on a fresh HTTP/1.1 connection.
pub async fn get_with(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Reply {
    let mut request = Request::get(path);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    send(addr, request.body(Full::default()).unwrap()).await
}

/// A TCP server on 127.0.0.1 that echoes every byte back; runs until the test ends.
pub async fn start_tcp_echo() -> SocketAddr {
    let echo = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = echo.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = echo.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let (mut reader, mut writer) = stream.split();
                let _ = tokio::io::copy(&mut reader, &mut writer).await;
            });
        }
    });
    addr
}

/// A fresh h2c (prior knowledge) connection: its sender, and the task that drives it, which
/// ends when the connection does.
pub async fn h2_connection(
    addr: SocketAddr,
) -> (
    hyper::client::conn::http2::SendRequest<Full<Bytes>>,
    tokio::task::JoinHandle<Result<(), hyper::Error>>,
) {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    (sender, tokio::spawn(connection))
}

/// Sends one request on a fresh h2c (prior knowledge) connection.
pub async fn send_h2(addr: SocketAddr, request: Request<Full<Bytes>>) -> Reply {
    let (mut sender, _connection) = h2_connection(addr).await;
    let response = sender.send_request(request).await.unwrap();
    collect(response).await
}

async fn collect(response: http::Response<hyper::body::Incoming>) -> Reply {
    let (parts, body) = response.into_parts();
    let collected = body.collect().await.unwrap();
    let trailers = collected.trailers().cloned();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body: String::from_utf8_lossy(&collected.to_bytes()).into_owned(),
        trailers,
    }
}

/// Writes raw bytes and reads until the peer closes or `timeout` passes; returns the text.
pub async fn raw_exchange(addr: SocketAddr, bytes: &[u8], timeout: Duration) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    read_for(&mut stream, timeout).await
}

/// Reads what arrives until the peer closes or `timeout` passes.
pub async fn read_for(stream: &mut TcpStream, timeout: Duration) -> String {
    let mut received = Vec::new();
    let _ = tokio::time::timeout(timeout, async {
        let mut buffer = [0u8; 4096];
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => received.extend_from_slice(&buffer[..n]),
            }
        }
    })
    .await;
    String::from_utf8_lossy(&received).into_owned()
}

/// Polls `check` every 20ms until it holds or `within` passes. For waiting on real background
/// work (health checks on real sockets), not for asserting timing.
pub async fn eventually(within: Duration, mut check: impl AsyncFnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    while tokio::time::Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}
