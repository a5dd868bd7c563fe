//! HTTP/1.1 upgrades (WebSocket and friends): once both sides agreed to switch protocols, the
//! two connections are spliced together byte for byte.

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

use crate::upstream::ActiveRequest;

/// Splices the downstream and upstream connections once both have switched protocols. The
/// endpoint counts the tunnel as in flight until either side closes.
pub fn spawn_tunnel(downstream: OnUpgrade, upstream: OnUpgrade, active: Option<ActiveRequest>) {
    tokio::task::spawn_local(async move {
        let (downstream, upstream) = match tokio::try_join!(downstream, upstream) {
            Ok(pair) => pair,
            Err(error) => {
                tracing::debug!(%error, "upgrade did not complete");
                return;
            }
        };
        let mut downstream = TokioIo::new(downstream);
        let mut upstream = TokioIo::new(upstream);
        match tokio::io::copy_bidirectional(&mut downstream, &mut upstream).await {
            Ok((sent, received)) => tracing::debug!(sent, received, "upgraded connection closed"),
            Err(error) => tracing::debug!(%error, "upgraded connection failed"),
        }
        drop(active);
    });
}
