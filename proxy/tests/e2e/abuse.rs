//! Clients that hold resources on purpose, or by being broken: each is cut off on time and
//! counted by reason, while other clients are served.

use std::time::Duration;

use tokio::io::AsyncWriteExt;

use crate::support::*;

fn config(listener_extra: &str) -> String {
    config_with(listener_extra, "")
}

/// One listener to the cluster `backend` (the upstream `app`), with extra listener and
/// cluster fields.
fn config_with(listener_extra: &str, cluster_extra: &str) -> String {
    format!(
        r#"
workers: 1
listeners:
  - name: main
    address: 127.0.0.1:0
{listener_extra}
    routes:
      - match: {{ prefix: / }}
        cluster: backend
clusters:
  - name: backend
    endpoints: ["{{app}}"]
{cluster_extra}
"#
    )
}

fn cutoffs(metrics: &str, reason: &str) -> u64 {
    let prefix =
        format!(r#"sluice_downstream_cutoffs_total{{listener="main",reason="{reason}"}} "#);
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(prefix.as_str()))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slowloris_client_is_closed_at_the_header_timeout() {
    let upstream = TestUpstream::start("app").await;
    let proxy = start_proxy(&config("    request_header_timeout: 300ms"), &[&upstream]).await;
    let mut slow = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n")
        .await
        .unwrap();
    // A header line every 100ms: never a complete head.
    let trickle = async {
        for n in 0.. {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if slow
                .write_all(format!("x-slow-{n}: 1\r\n").as_bytes())
                .await
                .is_err()
            {
                return n;
            }
        }
        unreachable!()
    };
    let lines = tokio::time::timeout(Duration::from_secs(10), trickle)
        .await
        .expect("the slow client was never cut off");
    assert!(lines < 20, "cut off only after {lines} header lines");
    // Others are served meanwhile and after.
    assert_eq!(get(proxy.addr, "/").await.status, 200);
    assert_eq!(cutoffs(&proxy.metrics().await, "request_header_timeout"), 1);
    assert_eq!(
        upstream.requests(),
        1,
        "the slow request never reached the upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_post_gets_408_at_the_request_body_timeout() {
    let upstream = TestUpstream::start("app").await;
    let proxy = start_proxy(&config("    request_body_timeout: 500ms"), &[&upstream]).await;
    let mut slow = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    // Ten of the hundred bytes it announced, then nothing.
    slow.write_all(b"POST /echo HTTP/1.1\r\nHost: t\r\ncontent-length: 100\r\n\r\n0123456789")
        .await
        .unwrap();
    let started = tokio::time::Instant::now();
    let reply = read_for(&mut slow, Duration::from_secs(5)).await;
    assert!(reply.starts_with("HTTP/1.1 408"), "{reply}");
    assert!(
        reply.contains("x-sluice-reason: request_body_timeout"),
        "{reply}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert!(proxy.metrics().await.contains(
        r#"sluice_http_local_replies_total{listener="main",reason="request_body_timeout"} 1"#
    ));
    // A body that keeps coming, however slowly, is not cut off.
    let mut steady = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    steady
        .write_all(b"POST /echo HTTP/1.1\r\nHost: t\r\ncontent-length: 6\r\n\r\n")
        .await
        .unwrap();
    for byte in b"steady" {
        tokio::time::sleep(Duration::from_millis(300)).await;
        steady.write_all(&[*byte]).await.unwrap();
    }
    let reply = read_for(&mut steady, Duration::from_secs(5)).await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_reset_at_the_send_timeout() {
    let upstream = TestUpstream::start("app").await;
    let proxy = start_proxy(&config("    send_timeout: 500ms"), &[&upstream]).await;
    // Asks for 64 MiB and reads none of it: the proxy's writes block once the socket buffers
    // are full.
    let mut stalled = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    stalled
        .write_all(b"GET /bytes/67108864 HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let cut = eventually(Duration::from_secs(10), async || {
        cutoffs(&proxy.metrics().await, "send_timeout") == 1
    })
    .await;
    assert!(cut, "{}", proxy.metrics().await);
    // The request is over for the proxy: nothing of it is in flight any more.
    let settled = eventually(Duration::from_secs(5), async || {
        proxy
            .metrics()
            .await
            .contains(r#"sluice_http_requests_active{listener="main"} 0"#)
    })
    .await;
    assert!(settled, "{}", proxy.metrics().await);
    assert_eq!(get(proxy.addr, "/").await.status, 200);
    // A client that reads slowly but steadily is not cut off.
    let reply = get(proxy.addr, "/bytes/1048576").await;
    assert_eq!(reply.body.len(), 1 << 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_listener_limit_are_closed_at_accept() {
    let upstream = TestUpstream::start("app").await;
    let proxy = start_proxy(&config("    max_connections: 2"), &[&upstream]).await;
    let mut first = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let mut second = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    for stream in [&mut first, &mut second] {
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .unwrap();
        let reply = read_for(stream, Duration::from_millis(300)).await;
        assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    }
    // The third is closed without an answer.
    let refused = raw_exchange(
        proxy.addr,
        b"GET / HTTP/1.1\r\nHost: t\r\n\r\n",
        Duration::from_secs(2),
    )
    .await;
    assert_eq!(refused, "", "the third connection was served");
    assert_eq!(cutoffs(&proxy.metrics().await, "max_connections"), 1);
    // The two it has keep being served, and a slot that frees up is used again.
    second
        .write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let reply = read_for(&mut second, Duration::from_millis(300)).await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    drop(first);
    let served = eventually(Duration::from_secs(5), async || {
        raw_exchange(
            proxy.addr,
            b"GET / HTTP/1.1\r\nHost: t\r\nconnection: close\r\n\r\n",
            Duration::from_secs(1),
        )
        .await
        .starts_with("HTTP/1.1 200")
    })
    .await;
    assert!(served);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_client_that_resets_its_requests_is_cut_off_within_a_budget() {
    use bytes::Bytes;
    use http_body_util::Full;

    let upstream = TestUpstream::start("app").await;
    let proxy = start_proxy(&config(""), &[&upstream]).await;
    let (mut sender, connection) = h2_connection(proxy.addr).await;
    // Each request is accepted and sent upstream (which answers after a second), then reset.
    let mut sent = 0;
    for _ in 0..1000 {
        if sender.ready().await.is_err() {
            break;
        }
        let request = http::Request::get("http://t/slow/1000")
            .body(Full::<Bytes>::default())
            .unwrap();
        let pending = sender.send_request(request);
        let _ = tokio::time::timeout(Duration::from_millis(5), pending).await;
        sent += 1;
    }
    assert!(sent < 1000, "the connection survived {sent} reset requests");
    let _ = tokio::time::timeout(Duration::from_secs(5), connection).await;
    let metrics = proxy.metrics().await;
    assert_eq!(cutoffs(&metrics, "premature_resets"), 1, "{metrics}");
    // Bounded: the budget and the streams in flight when it ran out, not the attack's length.
    assert!(
        upstream.requests() <= 250,
        "{} upstream requests",
        upstream.requests()
    );
    assert_eq!(get(proxy.addr, "/").await.status, 200);
}

fn limited_cluster(limits: &str) -> String {
    config_with("", limits)
}

/// Sends `count` requests for `path` at once; their statuses and bodies, sorted by status.
async fn at_once(proxy: &TestProxy, path: &str, count: usize) -> Vec<(u16, String)> {
    let mut sends = tokio::task::JoinSet::new();
    for _ in 0..count {
        let (addr, path) = (proxy.addr, path.to_owned());
        sends.spawn(async move { get(addr, &path).await });
    }
    let mut replies = Vec::new();
    while let Some(reply) = sends.join_next().await {
        let reply = reply.unwrap();
        replies.push((reply.status.as_u16(), reply.body));
    }
    replies.sort();
    replies
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_past_the_clusters_max_requests_get_503_naming_it() {
    let upstream = TestUpstream::start("app").await;
    let proxy = start_proxy(&limited_cluster("    max_requests: 2"), &[&upstream]).await;
    let replies = at_once(&proxy, "/slow/500", 3).await;
    assert_eq!(replies[0].0, 200, "{replies:?}");
    assert_eq!(replies[1].0, 200, "{replies:?}");
    assert_eq!(replies[2].0, 503, "{replies:?}");
    assert_eq!(
        replies[2].1,
        "cluster backend: max_requests (2) requests are in flight"
    );
    assert_eq!(upstream.requests(), 2);
    let metrics = proxy.metrics().await;
    assert!(
        metrics.contains(
            r#"sluice_http_local_replies_total{listener="main",reason="upstream_overflow"} 1"#
        ),
        "{metrics}"
    );
    // Once they are answered, there is room again.
    assert_eq!(get(proxy.addr, "/").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_wait_for_the_clusters_max_connections_and_past_the_pending_limit_overflow() {
    let upstream = TestUpstream::start("app").await;
    let proxy = start_proxy(
        &limited_cluster("    max_connections: 1\n    max_pending_requests: 1"),
        &[&upstream],
    )
    .await;
    let replies = at_once(&proxy, "/slow/300", 3).await;
    // One on the connection, one waiting for it (then served), one past the pending limit.
    assert_eq!(replies[0].0, 200, "{replies:?}");
    assert_eq!(replies[1].0, 200, "{replies:?}");
    assert_eq!(replies[2].0, 503, "{replies:?}");
    assert_eq!(
        replies[2].1,
        "cluster backend: max_pending_requests (1) requests already wait for one of its max_connections (1) connections"
    );
    assert_eq!(upstream.connections(), 1, "one connection carried both");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_ends_after_max_requests_per_connection() {
    let upstream = TestUpstream::start("app").await;
    let proxy = start_proxy(&config("    max_requests_per_connection: 2"), &[&upstream]).await;
    // HTTP/1.1: the second response says connection: close, and the connection closes.
    let mut client = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    client
        .write_all(b"GET /a HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let first = read_for(&mut client, Duration::from_millis(300)).await;
    assert!(!first.contains("connection: close"), "{first}");
    client
        .write_all(b"GET /b HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let second = read_for(&mut client, Duration::from_secs(5)).await;
    assert!(second.contains("connection: close"), "{second}");

    // HTTP/2: GOAWAY after the second stream; both are answered, a third needs a new connection.
    use bytes::Bytes;
    use http_body_util::Full;
    let (mut sender, connection) = h2_connection(proxy.addr).await;
    for _ in 0..2 {
        sender.ready().await.unwrap();
        let request = http::Request::get("http://t/")
            .body(Full::<Bytes>::default())
            .unwrap();
        assert_eq!(sender.send_request(request).await.unwrap().status(), 200);
    }
    let ended = tokio::time::timeout(Duration::from_secs(5), connection).await;
    assert!(ended.is_ok(), "the HTTP/2 connection stayed open");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_max_memory_the_proxy_sheds_new_connections_and_requests_until_it_is_back() {
    let upstream = TestUpstream::start("app").await;
    let proxy = start_proxy(&config(""), &[&upstream]).await;
    let mut open = KeptConnection::open(proxy.addr).await;
    assert_eq!(open.get("/").await.status, 200);

    // A bound this test process is far past: the proxy sheds within a sample or two.
    let shedding = test_config(
        &format!("overload: {{ max_memory: 1MiB }}\n{}", config("")),
        &[&upstream],
    );
    proxy.proxy.applier().apply(shedding).await.unwrap();
    assert!(
        eventually(Duration::from_secs(5), async || {
            proxy
                .metrics()
                .await
                .lines()
                .any(|l| l == "sluice_overloaded 1")
        })
        .await
    );
    let shed = open.get("/").await;
    assert_eq!(shed.status, 503);
    assert_eq!(shed.header("x-sluice-reason"), Some("overload"));
    // The connection closes after it, so its memory can go.
    assert_eq!(shed.header("connection"), Some("close"));
    let refused = raw_exchange(
        proxy.addr,
        b"GET / HTTP/1.1\r\nHost: t\r\n\r\n",
        Duration::from_secs(2),
    )
    .await;
    assert!(
        !refused.contains("200"),
        "a new connection was served: {refused}"
    );
    assert!(cutoffs(&proxy.metrics().await, "overload") >= 1);

    // Without the bound, it serves again at once.
    proxy
        .proxy
        .applier()
        .apply(test_config(&config(""), &[&upstream]))
        .await
        .unwrap();
    let mut fresh = KeptConnection::open(proxy.addr).await;
    assert_eq!(fresh.get("/").await.status, 200);
    assert_eq!(get(proxy.addr, "/").await.status, 200);
    assert!(
        proxy
            .metrics()
            .await
            .lines()
            .any(|l| l == "sluice_overloaded 0")
    );
}
