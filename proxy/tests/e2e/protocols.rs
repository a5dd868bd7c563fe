//! HTTP/2 (h2c), gRPC-style trailers, WebSocket-style upgrades, and raw TCP.

use std::time::Duration;

use http::Request;
use http_body_util::Full;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_downstream_reaches_an_http1_upstream() {
    let upstream = TestUpstream::start("app").await;
    let proxy = start_proxy(&simple_config("\"{app}\"", "", ""), &[&upstream]).await;
    let request = Request::get("http://svc.example/h2?x=1")
        .body(Full::default())
        .unwrap();
    let reply = send_h2(proxy.addr, request).await;
    assert_eq!(reply.status, 200);
    assert!(
        reply.body.starts_with("GET /h2?x=1 HTTP/1.1\n"),
        "{}",
        reply.body
    );
    assert_eq!(
        reply.echoed("host"),
        Some("svc.example"),
        ":authority becomes Host"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_style_trailers_pass_through_http2_end_to_end() {
    let upstream = TestUpstream::start("app").await;
    let proxy = start_proxy(
        &simple_config("\"{app}\"", "    protocol: http2", ""),
        &[&upstream],
    )
    .await;
    let request = Request::post("http://svc.example/trailers")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(bytes::Bytes::from_static(b"\0\0\0\0\0")))
        .unwrap();
    let reply = send_h2(proxy.addr, request).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body, "grpc-ish body");
    let trailers = reply.trailers.expect("trailers arrive");
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(trailers["grpc-message"], "fine");

    // The upstream saw HTTP/2 with `te: trailers` intact.
    let echo = send_h2(
        proxy.addr,
        Request::get("http://svc.example/e")
            .header("te", "trailers")
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert!(
        echo.body.starts_with("GET http://svc.example/e HTTP/2.0\n"),
        "{}",
        echo.body
    );
    assert_eq!(echo.echoed("te"), Some("trailers"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgraded_connections_are_spliced_both_ways() {
    let upstream = TestUpstream::start("app").await;
    let proxy = start_proxy(&simple_config("\"{app}\"", "", ""), &[&upstream]).await;
    let mut stream = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    stream
        .write_all(
            b"GET /upgrade HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n",
        )
        .await
        .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        stream.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: echo"), "{head}");
    for message in ["ping", "a longer message over the tunnel"] {
        stream.write_all(message.as_bytes()).await.unwrap();
        let mut echoed = vec![0u8; message.len()];
        tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut echoed))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(echoed, message.as_bytes());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_listeners_proxy_raw_bytes() {
    let echo_addr = start_tcp_echo().await;
    let yaml = format!(
        r#"
listeners:
  - name: main
    address: 127.0.0.1:0
    protocol: tcp
    cluster: echo
clusters:
  - {{ name: echo, endpoints: ["{echo_addr}"] }}
"#
    );
    let proxy = start_proxy(&yaml, &[]).await;
    let mut stream = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let payload: Vec<u8> = (0..200_000u32).map(|i| (i % 256) as u8).collect();
    let (mut reader, mut writer) = stream.split();
    let (_, received) = tokio::join!(
        async {
            writer.write_all(&payload).await.unwrap();
            writer.shutdown().await.unwrap();
        },
        async {
            let mut received = Vec::new();
            reader.read_to_end(&mut received).await.unwrap();
            received
        }
    );
    assert_eq!(received, payload);
    let metrics = proxy.metrics().await;
    assert!(
        metrics.contains(
            r#"sluice_tcp_bytes_total{direction="downstream_to_upstream",listener="main"} 200000"#
        ),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_requests_get_the_proxys_own_replies_as_grpc_statuses() {
    // A dead endpoint: a gRPC client reads 14 UNAVAILABLE, as from Envoy; others a 503.
    let dead = "\"127.0.0.1:1\"";
    let proxy = start_proxy(&simple_config(dead, "    protocol: http2", ""), &[]).await;
    let grpc = || {
        Request::post("http://svc.example/pkg.Service/Call")
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(Full::new(bytes::Bytes::from_static(b"\0\0\0\0\0")))
            .unwrap()
    };
    let reply = send_h2(proxy.addr, grpc()).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-type"), Some("application/grpc"));
    assert_eq!(reply.header("grpc-status"), Some("14"));
    assert_eq!(
        reply.header("x-sluice-reason"),
        Some("upstream_connect_failure")
    );
    assert!(reply.header("grpc-message").is_some());
    assert_eq!(reply.body, "");

    let plain = get(proxy.addr, "/pkg.Service/Call").await;
    assert_eq!(plain.status, 503);
    assert_eq!(plain.header("grpc-status"), None);

    // No route: 12 UNIMPLEMENTED, Envoy's mapping of 404.
    let yaml = simple_config(dead, "", "").replace("prefix: /", "prefix: /only");
    let proxy = start_proxy(&yaml, &[]).await;
    let reply = send_h2(proxy.addr, grpc()).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("grpc-status"), Some("12"));
    assert_eq!(reply.header("x-sluice-reason"), Some("no_route"));
}
