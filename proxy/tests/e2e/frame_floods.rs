//! HTTP/2 frame floods from a raw client: PING, SETTINGS, WINDOW_UPDATE and empty DATA
//! frames past their budgets end the connection, counted as `frame_flood`, while a
//! well-behaved HTTP/2 client on another connection is served throughout.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut bytes = u32::try_from(payload.len()).unwrap().to_be_bytes()[1..].to_vec();
    bytes.extend([kind, flags]);
    bytes.extend(stream.to_be_bytes());
    bytes.extend_from_slice(payload);
    bytes
}

/// A raw HTTP/2 connection past its preface and first SETTINGS.
async fn raw_h2(addr: std::net::SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut hello = PREFACE.to_vec();
    hello.extend(frame(0x4, 0, 0, &[]));
    stream.write_all(&hello).await.unwrap();
    stream
}

/// Writes `frames` until the proxy closes the connection; true if it did.
async fn closed_while_sending(stream: &mut TcpStream, frames: &[u8], rounds: usize) -> bool {
    let (mut reader, mut writer) = stream.split();
    let drain = async {
        let mut sink = vec![0; 65536];
        while matches!(reader.read(&mut sink).await, Ok(n) if n > 0) {}
    };
    let flood = async {
        for _ in 0..rounds {
            if writer.write_all(frames).await.is_err() {
                return;
            }
        }
        std::future::pending::<()>().await;
    };
    tokio::time::timeout(Duration::from_secs(10), async {
        tokio::select! {
            () = drain => {}
            () = flood => {}
        }
    })
    .await
    .is_ok()
}

fn flood_cutoffs(metrics: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix(
                r#"sluice_downstream_cutoffs_total{listener="main",reason="frame_flood"} "#,
            )
        })
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_and_empty_frame_floods_end_the_connection_while_others_are_served() {
    let upstream = TestUpstream::start("app").await;
    let proxy = start_proxy(&simple_config("\"{app}\"", "", ""), &[&upstream]).await;
    let (mut good, _connection) = h2_connection(proxy.addr).await;

    let ping = frame(0x6, 0, 0, b"12345678");
    let settings = frame(0x4, 0, 0, &[]);
    let window_update = frame(0x8, 0, 0, &1u32.to_be_bytes());
    // GET / (HPACK static entries), headers done, the stream left open; then empty DATA.
    let mut empty_data = frame(0x1, 0x4, 1, &[0x82, 0x86, 0x84]);
    for _ in 0..20 {
        empty_data.extend(frame(0x0, 0, 1, &[]));
    }
    let floods: [(&str, Vec<u8>, usize); 4] = [
        ("PING", ping.repeat(100), 100),
        ("SETTINGS", settings.repeat(100), 100),
        ("WINDOW_UPDATE", window_update.repeat(100), 100),
        ("empty DATA", empty_data, 1),
    ];
    for (expected, (name, frames, rounds)) in (1..).zip(floods) {
        let mut attacker = raw_h2(proxy.addr).await;
        assert!(
            closed_while_sending(&mut attacker, &frames, rounds).await,
            "a {name} flood left the connection open"
        );
        let metrics = proxy.metrics().await;
        assert_eq!(flood_cutoffs(&metrics), expected, "{name}: {metrics}");
        let request = http::Request::get("http://t/")
            .body(http_body_util::Full::<bytes::Bytes>::default())
            .unwrap();
        let served = good.send_request(request).await.unwrap();
        assert_eq!(
            served.status(),
            200,
            "the well-behaved client, after the {name} flood"
        );
    }
    // Well-behaved HTTP/2 traffic with a large response is not mistaken for a flood.
    assert_eq!(
        send_h2(
            proxy.addr,
            http::Request::get("http://t/bytes/4000000")
                .body(Default::default())
                .unwrap()
        )
        .await
        .status,
        200
    );
    assert_eq!(flood_cutoffs(&proxy.metrics().await), 4);
}
