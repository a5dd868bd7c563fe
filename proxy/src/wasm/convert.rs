//! Between hyper's request/response parts and the pairs list a filter sees: pseudo-headers
//! (`:method`, `:scheme`, `:authority`, `:path`; `:status`) first, then the headers, names
//! lowercase.

use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, request, response};

use super::pairs::Pair;
use super::state::LocalResponse;
use crate::http::ProxyBody;

pub fn request_pairs(parts: &request::Parts, scheme: &str) -> Vec<Pair> {
    let authority = parts
        .uri
        .authority()
        .map(|a| a.as_str().to_owned())
        .or_else(|| {
            parts
                .headers
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_owned)
        })
        .unwrap_or_default();
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut pairs = Vec::with_capacity(parts.headers.len() + 4);
    pairs.push((":authority".to_owned(), authority.into_bytes()));
    pairs.push((":path".to_owned(), path.as_bytes().to_vec()));
    pairs.push((
        ":method".to_owned(),
        parts.method.as_str().as_bytes().to_vec(),
    ));
    pairs.push((":scheme".to_owned(), scheme.as_bytes().to_vec()));
    // `Host` is `:authority`, as in Envoy's header map; it is written back from there.
    pairs.extend(
        parts
            .headers
            .iter()
            .filter(|(name, _)| *name != http::header::HOST)
            .map(|(name, value)| (name.as_str().to_owned(), value.as_bytes().to_vec())),
    );
    pairs
}

pub fn response_pairs(parts: &response::Parts) -> Vec<Pair> {
    let mut pairs = Vec::with_capacity(parts.headers.len() + 1);
    pairs.push((
        ":status".to_owned(),
        parts.status.as_str().as_bytes().to_vec(),
    ));
    append_headers(&mut pairs, &parts.headers);
    pairs
}

pub fn header_pairs(headers: &HeaderMap) -> Vec<Pair> {
    let mut pairs = Vec::with_capacity(headers.len());
    append_headers(&mut pairs, headers);
    pairs
}

fn append_headers(pairs: &mut Vec<Pair>, headers: &HeaderMap) {
    pairs.extend(
        headers
            .iter()
            .map(|(name, value)| (name.as_str().to_owned(), value.as_bytes().to_vec())),
    );
}

/// Writes what the filters left back into the request: method, path (origin form),
/// `:authority` as `Host`, and the headers.
pub fn apply_request_pairs(parts: &mut request::Parts, pairs: &[Pair]) {
    let mut headers = HeaderMap::with_capacity(pairs.len());
    let mut authority = None;
    for (name, value) in pairs {
        match name.as_str() {
            ":method" => {
                if let Ok(method) = Method::from_bytes(value) {
                    parts.method = method;
                }
            }
            ":path" => {
                if let Ok(uri) = http::Uri::try_from(value.as_slice()) {
                    parts.uri = uri;
                }
            }
            ":authority" => authority = Some(value),
            ":scheme" => {}
            _ => insert(&mut headers, name, value),
        }
    }
    // `:authority` is what the filters see and may change; `Host` follows it.
    if let Some(host) = authority
        .filter(|a| !a.is_empty())
        .and_then(|a| HeaderValue::from_bytes(a).ok())
    {
        headers.insert(http::header::HOST, host);
    }
    parts.headers = headers;
}

pub fn apply_response_pairs(parts: &mut response::Parts, pairs: &[Pair]) {
    let mut headers = HeaderMap::with_capacity(pairs.len());
    for (name, value) in pairs {
        if name == ":status" {
            if let Some(status) = std::str::from_utf8(value)
                .ok()
                .and_then(|s| s.parse::<u16>().ok())
                .and_then(|s| StatusCode::from_u16(s).ok())
            {
                parts.status = status;
            }
        } else if !name.starts_with(':') {
            insert(&mut headers, name, value);
        }
    }
    parts.headers = headers;
}

pub fn pairs_header_map(pairs: Vec<Pair>) -> HeaderMap {
    let mut headers = HeaderMap::with_capacity(pairs.len());
    for (name, value) in pairs {
        insert(&mut headers, &name, &value);
    }
    headers
}

/// A header the guest wrote that HTTP cannot carry (a newline in a value, a space in a
/// name) is dropped: forwarding it would corrupt the message.
fn insert(headers: &mut HeaderMap, name: &str, value: &[u8]) {
    match (
        HeaderName::from_bytes(name.as_bytes()),
        HeaderValue::from_bytes(value),
    ) {
        (Ok(name), Ok(value)) => {
            headers.append(name, value);
        }
        _ => {
            tracing::debug!(header = %name, "dropping a header a filter set that HTTP cannot carry")
        }
    }
}

/// A filter's `proxy_send_local_response` as a response, the way Envoy shapes it: plain
/// text by default, or a gRPC trailers-only reply when a gRPC status was given.
pub fn local_response(local: LocalResponse) -> http::Response<ProxyBody> {
    let status = StatusCode::from_u16(local.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut headers = HeaderMap::new();
    // The filter's headers first, then what the reply adds, as Envoy orders them.
    for (name, value) in &local.headers {
        insert(&mut headers, name, value);
    }
    let body = if let Some(grpc_status) = local.grpc_status {
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        headers.insert("grpc-status", HeaderValue::from(grpc_status));
        if let Ok(message) = HeaderValue::from_bytes(&local.body)
            && !local.body.is_empty()
        {
            headers.insert("grpc-message", message);
        }
        ProxyBody::Empty
    } else {
        if !local.body.is_empty() && !headers.contains_key(http::header::CONTENT_TYPE) {
            headers.insert(
                http::header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain"),
            );
        }
        ProxyBody::full(local.body)
    };
    let mut response = http::Response::new(body);
    *response.status_mut() = if local.grpc_status.is_some() {
        StatusCode::OK
    } else {
        status
    };
    *response.headers_mut() = headers;
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_through_pairs_with_rewrites() {
        let request = http::Request::post("/a?b=1")
            .header("host", "svc.local")
            .header("x-one", "1")
            .header("x-one", "2")
            .body(())
            .unwrap();
        let (mut parts, ()) = request.into_parts();
        let mut pairs = request_pairs(&parts, "http");
        assert_eq!(
            &pairs[..4],
            &[
                (":authority".to_owned(), b"svc.local".to_vec()),
                (":path".to_owned(), b"/a?b=1".to_vec()),
                (":method".to_owned(), b"POST".to_vec()),
                (":scheme".to_owned(), b"http".to_vec()),
            ]
        );
        pairs[1].1 = b"/rewritten".to_vec();
        pairs.push(("x-added".into(), b"yes".to_vec()));
        pairs.push(("bad name".into(), b"dropped".to_vec()));
        apply_request_pairs(&mut parts, &pairs);
        assert_eq!(parts.uri, "/rewritten");
        assert_eq!(parts.method, Method::POST);
        assert_eq!(parts.headers["host"], "svc.local");
        assert_eq!(parts.headers.get_all("x-one").iter().count(), 2);
        assert_eq!(parts.headers["x-added"], "yes");
        assert_eq!(parts.headers.len(), 4);
    }

    #[test]
    fn grpc_local_replies_are_trailers_only() {
        let reply = local_response(LocalResponse {
            status: 403,
            details: "denied".into(),
            body: b"no access".to_vec(),
            headers: vec![("x-why".into(), b"policy".to_vec())],
            grpc_status: Some(7),
        });
        assert_eq!(reply.status(), 200);
        assert_eq!(reply.headers()["grpc-status"], "7");
        assert_eq!(reply.headers()["grpc-message"], "no access");
        assert_eq!(reply.headers()["x-why"], "policy");
    }
}
