//! Malformed requests are refused with the right status, and never disturb other connections.

use std::time::Duration;

use tokio::io::AsyncWriteExt;

use crate::support::*;

const WAIT: Duration = Duration::from_secs(5);

async fn status_line(proxy: &TestProxy, raw: &[u8]) -> String {
    let response = raw_exchange(proxy.addr, raw, WAIT).await;
    response
        .lines()
        .next()
        .unwrap_or("<connection closed without a response>")
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_4xx_and_other_connections_carry_on() {
    let upstream = TestUpstream::start("app").await;
    let proxy = start_proxy(&simple_config("\"{app}\"", "", ""), &[&upstream]).await;

    // A healthy keep-alive connection, opened before the bad input and used after it.
    let mut bystander = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    bystander
        .write_all(b"GET /first HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let first = read_for(&mut bystander, Duration::from_millis(300)).await;
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");

    let invalid_header = b"GET / HTTP/1.1\r\nHost: t\r\nBad\x01Name: x\r\n\r\n";
    assert!(
        status_line(&proxy, invalid_header)
            .await
            .starts_with("HTTP/1.1 400")
    );

    let oversize = format!(
        "GET / HTTP/1.1\r\nHost: t\r\nX-Big: {}\r\n\r\n",
        "a".repeat(100 * 1024)
    );
    assert!(
        status_line(&proxy, oversize.as_bytes())
            .await
            .starts_with("HTTP/1.1 431")
    );

    // Both framings: Transfer-Encoding alone decides (RFC 9112 §6.1), Content-Length never
    // reaches the upstream, and the connection closes after the response, so nothing
    // smuggled behind the body can be read as a second request.
    let smuggling =
        b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 30\r\nTransfer-Encoding: chunked\r\n\r\n\
        0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: t\r\n\r\n";
    let before = upstream.requests();
    let response = raw_exchange(proxy.addr, smuggling, WAIT).await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains("connection: close"), "{response}");
    assert!(!response.contains("content-length: 30"), "{response}");
    assert!(!response.contains("/smuggled"), "{response}");
    assert_eq!(
        upstream.requests(),
        before + 1,
        "exactly one request reached the upstream"
    );

    // A broken chunked body is the client's fault: 400 with its own reason, never a 5xx.
    let bad_chunk =
        b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nZZ\r\nhello\r\n0\r\n\r\n";
    let response = raw_exchange(proxy.addr, bad_chunk, WAIT).await;
    assert!(response.starts_with("HTTP/1.1 400"), "{response}");
    assert!(
        response.contains("x-sluice-reason: downstream_protocol_error"),
        "{response}"
    );
    let metrics = proxy.metrics().await;
    assert!(
        metrics.contains(r#"sluice_http_local_replies_total{listener="main",reason="downstream_protocol_error"} 1"#),
        "{metrics}"
    );
    assert!(!metrics.contains("upstream_reset"), "{metrics}");

    let garbage = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 not http at all\r\n\r\n";
    assert!(
        status_line(&proxy, garbage)
            .await
            .starts_with("HTTP/1.1 400")
    );

    bystander
        .write_all(b"GET /second HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let second = read_for(&mut bystander, Duration::from_millis(300)).await;
    assert!(
        second.starts_with("HTTP/1.1 200"),
        "the bystander connection still works: {second}"
    );
    assert_eq!(get(proxy.addr, "/").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_header_limit_is_configurable() {
    let upstream = TestUpstream::start("app").await;
    let yaml = simple_config("\"{app}\"", "", "").replace(
        "    address: 127.0.0.1:0\n",
        "    address: 127.0.0.1:0\n    max_request_headers_size: 16KiB\n",
    );
    let proxy = start_proxy(&yaml, &[&upstream]).await;
    let under = format!(
        "GET / HTTP/1.1\r\nHost: t\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
        "a".repeat(8 * 1024)
    );
    assert!(
        status_line(&proxy, under.as_bytes())
            .await
            .starts_with("HTTP/1.1 200")
    );
    let over = format!(
        "GET / HTTP/1.1\r\nHost: t\r\nX-Big: {}\r\n\r\n",
        "a".repeat(20 * 1024)
    );
    assert!(
        status_line(&proxy, over.as_bytes())
            .await
            .starts_with("HTTP/1.1 431")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_downstream_connections_are_closed() {
    let upstream = TestUpstream::start("app").await;
    let yaml = simple_config("\"{app}\"", "", "").replace(
        "    address: 127.0.0.1:0\n",
        "    address: 127.0.0.1:0\n    idle_timeout: 200ms\n",
    );
    let proxy = start_proxy(&yaml, &[&upstream]).await;
    let mut stream = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    // read_for returns once the proxy closes the idle connection, well before the 5s limit.
    let started = tokio::time::Instant::now();
    let response = read_for(&mut stream, WAIT).await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(
        started.elapsed() < WAIT,
        "the idle connection was closed by the proxy"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_mid_body_is_counted_as_leaving_not_as_an_upstream_failure() {
    let upstream = TestUpstream::start("app").await;
    let proxy = start_proxy(&simple_config("\"{app}\"", "", ""), &[&upstream]).await;
    let mut client = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    client
        .write_all(b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\nonly ten b")
        .await
        .unwrap();
    // Let the request reach the upstream, then leave.
    let reached = eventually(WAIT, async || upstream.requests() == 1).await;
    assert!(reached);
    drop(client);
    let counted = eventually(WAIT, async || {
        proxy.metrics().await.contains(
            r#"sluice_http_local_replies_total{listener="main",reason="downstream_disconnect"} 1"#,
        )
    })
    .await;
    let metrics = proxy.metrics().await;
    assert!(counted, "{metrics}");
    assert!(!metrics.contains("upstream_reset"), "{metrics}");
}
