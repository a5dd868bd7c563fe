//! The request deadline: the route's timeout, shortened by a gRPC client's `grpc-timeout`.

use std::time::Duration;

use http::HeaderMap;
use tokio::time::Instant;

/// When the whole request must be done, or `None` for no deadline.
pub fn request_deadline(
    route_timeout: Option<Duration>,
    headers: &HeaderMap,
    started: Instant,
) -> Option<Instant> {
    let grpc = headers
        .get("grpc-timeout")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_grpc_timeout);
    let timeout = match (route_timeout, grpc) {
        (Some(route), Some(grpc)) => Some(route.min(grpc)),
        (route, grpc) => route.or(grpc),
    };
    timeout.map(|t| started + t)
}

/// `grpc-timeout` is up to 8 digits and a unit: H, M, S, m (ms), u (µs), n (ns).
fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount * 3600),
        "M" => Duration::from_secs(amount * 60),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse() {
        assert_eq!(parse_grpc_timeout("100m"), Some(Duration::from_millis(100)));
        assert_eq!(parse_grpc_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout("5"), None);
        assert_eq!(parse_grpc_timeout("m"), None);
        assert_eq!(parse_grpc_timeout("123456789S"), None);
        assert_eq!(parse_grpc_timeout(""), None);
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn the_shorter_of_route_and_grpc_timeout_wins() {
        let now = Instant::now();
        let mut headers = HeaderMap::new();
        assert_eq!(
            request_deadline(Some(Duration::from_secs(15)), &headers, now),
            Some(now + Duration::from_secs(15))
        );
        assert_eq!(request_deadline(None, &headers, now), None);
        headers.insert("grpc-timeout", "250m".parse().unwrap());
        assert_eq!(
            request_deadline(Some(Duration::from_secs(15)), &headers, now),
            Some(now + Duration::from_millis(250))
        );
        assert_eq!(
            request_deadline(None, &headers, now),
            Some(now + Duration::from_millis(250))
        );
        headers.insert("grpc-timeout", "1H".parse().unwrap());
        assert_eq!(
            request_deadline(Some(Duration::from_secs(15)), &headers, now),
            Some(now + Duration::from_secs(15))
        );
    }
}
