//! Replies to gRPC requests, shaped as Envoy shapes its local replies to them: a
//! trailers-only response (HTTP 200, `content-type: application/grpc`, `grpc-status`, and the
//! text as a percent-encoded `grpc-message`), so gRPC clients read a status instead of an
//! HTTP error they cannot parse.

use http::StatusCode;
use http::header::{HeaderMap, HeaderValue};

/// Whether a request is gRPC, as Envoy decides it for local replies: its content type is
/// exactly `application/grpc`, or starts with `application/grpc+` (`application/grpc-web` and
/// parameters such as `;charset=` do not count, as in Envoy).
pub fn is_grpc_request(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|content_type| {
            content_type
                .strip_prefix("application/grpc")
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('+'))
        })
}

/// Envoy's mapping of an HTTP status to a gRPC status, for a reply that names none.
pub fn status_for(status: StatusCode) -> u32 {
    match status.as_u16() {
        400 => 13,                   // INTERNAL
        401 => 16,                   // UNAUTHENTICATED
        403 => 7,                    // PERMISSION_DENIED
        404 => 12,                   // UNIMPLEMENTED
        429 | 502 | 503 | 504 => 14, // UNAVAILABLE
        _ => 2,                      // UNKNOWN
    }
}

/// `grpc-message` as the gRPC spec encodes it: bytes outside printable ASCII, and `%`, as
/// `%XX`.
fn percent_encode_message(message: &[u8]) -> String {
    let mut encoded = String::with_capacity(message.len());
    for &byte in message {
        if (0x20..=0x7e).contains(&byte) && byte != b'%' {
            encoded.push(char::from(byte));
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

/// Makes `headers` those of a trailers-only gRPC reply with `grpc_status` and, unless it is
/// empty, `message` as `grpc-message`.
pub fn add_status_headers(headers: &mut HeaderMap, grpc_status: u32, message: &[u8]) {
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers.insert("grpc-status", HeaderValue::from(grpc_status));
    if !message.is_empty()
        && let Ok(message) = HeaderValue::from_str(&percent_encode_message(message))
    {
        headers.insert("grpc-message", message);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_requests_are_told_by_their_content_type() {
        let with = |content_type: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_str(content_type).unwrap(),
            );
            is_grpc_request(&headers)
        };
        assert!(with("application/grpc"));
        assert!(with("application/grpc+proto"));
        assert!(!with("application/grpc;charset=utf-8"));
        assert!(!with("application/grpc-web"));
        assert!(!with("application/json"));
        assert!(!is_grpc_request(&HeaderMap::new()));
    }

    #[test]
    fn messages_are_percent_encoded_and_statuses_mapped() {
        let mut headers = HeaderMap::new();
        add_status_headers(
            &mut headers,
            status_for(StatusCode::SERVICE_UNAVAILABLE),
            b"50% down\n",
        );
        assert_eq!(headers["grpc-status"], "14");
        assert_eq!(headers["grpc-message"], "50%25 down%0A");
        assert_eq!(status_for(StatusCode::NOT_FOUND), 12);
        assert_eq!(status_for(StatusCode::IM_A_TEAPOT), 2);
    }
}
