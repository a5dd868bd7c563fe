//! What a proxy hop must do to every request: headers, pooling, streaming bodies.

use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_headers_are_added_and_hop_by_hop_headers_stop() {
    let upstream = TestUpstream::start("app").await;
    let proxy = start_proxy(&simple_config("\"{app}\"", "", ""), &[&upstream]).await;
    let request = Request::get("/echo?q=1")
        .header("host", "shop.example")
        .header("connection", "keep-alive, x-private")
        .header("x-private", "secret")
        .header("keep-alive", "timeout=5")
        .header("proxy-authorization", "Basic Zm9vOmJhcg==")
        .header("x-forwarded-for", "192.0.2.7")
        .header("x-custom", "kept")
        .body(Full::default())
        .unwrap();
    let reply = send(proxy.addr, request).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert!(
        reply.body.starts_with("GET /echo?q=1 HTTP/1.1\n"),
        "{}",
        reply.body
    );
    assert_eq!(
        reply.echoed("host"),
        Some("shop.example"),
        "Host is preserved"
    );
    assert_eq!(
        reply.echoed("x-forwarded-for"),
        Some("192.0.2.7, 127.0.0.1")
    );
    assert_eq!(reply.echoed("x-forwarded-proto"), Some("http"));
    assert_eq!(reply.echoed("x-custom"), Some("kept"));
    for gone in ["x-private", "keep-alive", "proxy-authorization"] {
        assert_eq!(
            reply.echoed(gone),
            None,
            "{gone} must not reach the upstream:\n{}",
            reply.body
        );
    }
    let request_id = reply
        .echoed("x-request-id")
        .expect("a request id is generated");
    assert_eq!(request_id.len(), 36, "{request_id}");

    let with_id = Request::get("/")
        .header("x-request-id", "trace-42")
        .body(Full::default())
        .unwrap();
    assert_eq!(
        send(proxy.addr, with_id).await.echoed("x-request-id"),
        Some("trace-42")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_connections_are_kept_alive_and_reused() {
    let upstream = TestUpstream::start("app").await;
    // One worker, so every request uses the same pool.
    let yaml = simple_config("\"{app}\"", "", "").replace("workers: 2", "workers: 1");
    let proxy = start_proxy(&yaml, &[&upstream]).await;
    for _ in 0..20 {
        assert_eq!(get(proxy.addr, "/").await.status, 200);
    }
    assert_eq!(upstream.requests(), 20);
    assert_eq!(
        upstream.connections(),
        1,
        "sequential requests share one pooled connection"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_and_chunked_bodies_stream_through_unchanged() {
    let upstream = TestUpstream::start("app").await;
    let proxy = start_proxy(&simple_config("\"{app}\"", "", ""), &[&upstream]).await;
    let payload: Vec<u8> = (0..4 * 1024 * 1024).map(|i| (i % 251) as u8).collect();
    let request = Request::post("/upload")
        .body(Full::new(Bytes::from(payload.clone())))
        .unwrap();
    let reply = send(proxy.addr, request).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.echoed("content-length"), Some("4194304"));
    let echoed_body = reply.body.split_once("\n\n").unwrap().1;
    assert_eq!(echoed_body.len(), String::from_utf8_lossy(&payload).len());

    // A chunked request arrives upstream re-framed, with the same bytes.
    let raw = b"POST /chunked HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
        5\r\nhello\r\n7\r\n, world\r\n0\r\n\r\n";
    let response = raw_exchange(proxy.addr, raw, Duration::from_secs(5)).await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(
        response.ends_with("hello, world")
            || response.contains("\r\n\r\nhello, world")
            || response.contains("\n\nhello, world"),
        "{response}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_continue_is_answered_before_the_body_is_sent() {
    let upstream = TestUpstream::start("app").await;
    let proxy = start_proxy(&simple_config("\"{app}\"", "", ""), &[&upstream]).await;
    let mut stream = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    use tokio::io::AsyncWriteExt;
    stream
        .write_all(b"PUT /put HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let interim = read_some(&mut stream).await;
    assert!(interim.starts_with("HTTP/1.1 100 Continue"), "{interim}");
    stream.write_all(b"data").await.unwrap();
    let rest = read_for(&mut stream, Duration::from_secs(5)).await;
    assert!(rest.contains("HTTP/1.1 200 OK"), "{rest}");
    assert!(rest.ends_with("data"), "{rest}");
    assert!(
        !rest.to_lowercase().contains("expect: 100-continue"),
        "Expect is answered here, not forwarded:\n{rest}"
    );
}

async fn read_some(stream: &mut tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut buffer = [0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buffer))
        .await
        .expect("an answer within 5s")
        .unwrap();
    String::from_utf8_lossy(&buffer[..n]).into_owned()
}
