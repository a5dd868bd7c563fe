//! Between hyper's request/response parts and the pairs list a filter sees: pseudo-headers
//! (`:method`, `:scheme`, `:authority`, `:path`; `:status`) first, then the headers, names
//! lowercase.

use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, request, response};

use super::pairs::Pair;
use super::state::LocalResponse;
use crate::http::{ProxyBody, grpc_reply};

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
/// `:authority` as `Host`, and the headers. What the filters did not change is not parsed
/// again (see [`apply_headers`]).
pub fn apply_request_pairs(parts: &mut request::Parts, pairs: &[Pair]) {
    let mut authority = None;
    for (name, value) in pairs.iter().filter(|(name, _)| name.starts_with(':')) {
        match name.as_str() {
            ":method" if parts.method.as_str().as_bytes() != value.as_slice() => {
                if let Ok(method) = Method::from_bytes(value) {
                    parts.method = method;
                }
            }
            ":path" if !path_is(&parts.uri, value) => {
                if let Ok(uri) = http::Uri::try_from(value.as_slice()) {
                    parts.uri = uri;
                }
            }
            ":authority" => authority = Some(value),
            _ => {}
        }
    }
    // `:authority` is what the filters see and may change; `Host` follows it.
    let host = authority
        .filter(|a| !a.is_empty())
        .and_then(|a| HeaderValue::from_bytes(a).ok());
    let excluded = Excluded {
        name: &http::header::HOST,
        keep: host.is_some(),
    };
    apply_headers(&mut parts.headers, pairs, Some(excluded));
    if let Some(host) = host
        && parts.headers.get(http::header::HOST) != Some(&host)
    {
        parts.headers.insert(http::header::HOST, host);
    }
}

/// A header the pairs leave out, which the caller sets itself afterwards.
#[derive(Clone, Copy)]
struct Excluded<'a> {
    name: &'a HeaderName,
    /// False when the header must go. Removing it from a kept map would reorder the others
    /// (a header map removes by swapping in its last entry), so the map is rebuilt instead.
    keep: bool,
}

/// Whether `uri` is already the origin form `path`. An absolute URI (HTTP/2, or a proxy
/// request) is rewritten to origin form even when the path is unchanged, so its authority
/// cannot outlive a filter's change of `:authority`.
fn path_is(uri: &http::Uri, path: &[u8]) -> bool {
    uri.authority().is_none()
        && uri
            .path_and_query()
            .is_some_and(|p| p.as_str().as_bytes() == path)
}

pub fn apply_response_pairs(parts: &mut response::Parts, pairs: &[Pair]) {
    // The last `:status` wins, as it did when every pair was applied in turn.
    if let Some((_, value)) = pairs.iter().rfind(|(name, _)| name == ":status")
        && parts.status.as_str().as_bytes() != value.as_slice()
        && let Some(status) = std::str::from_utf8(value)
            .ok()
            .and_then(|s| s.parse::<u16>().ok())
            .and_then(|s| StatusCode::from_u16(s).ok())
    {
        parts.status = status;
    }
    apply_headers(&mut parts.headers, pairs, None);
}

/// Makes `headers` what the filters' `pairs` say (pseudo-headers aside), given that the pairs
/// started as `headers` in iteration order without `excluded`. Filters mostly read, or add a
/// header or two: when every original header is still there, in order, the map is kept and
/// only the added pairs are parsed and appended. Otherwise the map is rebuilt without
/// `excluded` (the caller sets it), and headers that kept their place reuse their parsed name
/// and value.
fn apply_headers(headers: &mut HeaderMap, pairs: &[Pair], excluded: Option<Excluded<'_>>) {
    let excluded_name = excluded.map(|e| e.name);
    let regular = || pairs.iter().filter(|(name, _)| !name.starts_with(':'));
    let mut originals = headers
        .iter()
        .filter(|(name, _)| Some(*name) != excluded_name)
        .peekable();
    // How many pairs, from the first, are the original headers unchanged.
    let mut kept = 0;
    for pair in regular() {
        match originals.peek() {
            Some(original) if same_header(*original, pair) => {
                originals.next();
                kept += 1;
            }
            _ => break,
        }
    }
    let must_drop = excluded.is_some_and(|e| !e.keep && headers.contains_key(e.name));
    if originals.peek().is_none() && !must_drop {
        for (name, value) in regular().skip(kept) {
            insert(headers, name, value);
        }
        return;
    }
    // Something was removed, changed or reordered: rebuild, reusing what matches in order.
    let previous = std::mem::replace(headers, HeaderMap::with_capacity(pairs.len()));
    let mut originals = previous
        .iter()
        .filter(|(name, _)| Some(*name) != excluded_name)
        .peekable();
    for pair in regular() {
        match originals.peek() {
            Some((name, value)) if same_header((name, value), pair) => {
                headers.append((*name).clone(), (*value).clone());
                originals.next();
            }
            _ => insert(headers, &pair.0, &pair.1),
        }
    }
}

fn same_header((name, value): (&HeaderName, &HeaderValue), (pair_name, pair_value): &Pair) -> bool {
    name.as_str() == pair_name && value.as_bytes() == pair_value.as_slice()
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

/// A filter's `proxy_send_local_response` as a response, the way Envoy shapes it. A gRPC
/// request gets a trailers-only gRPC reply: HTTP 200, the filter's gRPC status (or the HTTP
/// status mapped to one, as Envoy maps it), and the body as a percent-encoded `grpc-message`.
/// Any other request gets the HTTP status and the body as plain text, whatever gRPC status the
/// filter gave.
pub fn local_response(local: LocalResponse, grpc_request: bool) -> http::Response<ProxyBody> {
    let status = StatusCode::from_u16(local.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut headers = HeaderMap::new();
    // The filter's headers first, then what the reply adds, as Envoy orders them.
    for (name, value) in &local.headers {
        insert(&mut headers, name, value);
    }
    let body = if grpc_request {
        let grpc_status = local
            .grpc_status
            .unwrap_or_else(|| grpc_reply::status_for(status));
        grpc_reply::add_status_headers(&mut headers, grpc_status, &local.body);
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
    *response.status_mut() = if grpc_request { StatusCode::OK } else { status };
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

    fn response_with(headers: &[(&str, &str)]) -> response::Parts {
        let mut response = http::Response::builder().status(200);
        for (name, value) in headers {
            response = response.header(*name, *value);
        }
        response.body(()).unwrap().into_parts().0
    }

    fn header_list(headers: &HeaderMap) -> Vec<(String, String)> {
        headers
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_owned()))
            .collect()
    }

    #[test]
    fn response_maps_follow_additions_removals_and_changes() {
        const ORIGINAL: &[(&str, &str)] = &[
            ("a", "1"),
            ("set-cookie", "x"),
            ("set-cookie", "y"),
            ("b", "2"),
        ];
        /// A case: its name, what the filter does to the pairs, and the headers it leaves.
        type Case = (
            &'static str,
            fn(&mut Vec<Pair>),
            &'static [(&'static str, &'static str)],
        );
        let cases: [Case; 5] = [
            ("unchanged", |_| {}, ORIGINAL),
            (
                "added",
                |p| p.push(("set-cookie".into(), b"z".to_vec())),
                &[
                    ("a", "1"),
                    ("set-cookie", "x"),
                    ("set-cookie", "y"),
                    ("set-cookie", "z"),
                    ("b", "2"),
                ],
            ),
            (
                "removed in the middle",
                |p| p.retain(|(_, v)| v.as_slice() != b"x"),
                &[("a", "1"), ("set-cookie", "y"), ("b", "2")],
            ),
            (
                "removed at the end",
                |p| {
                    p.pop();
                },
                &[("a", "1"), ("set-cookie", "x"), ("set-cookie", "y")],
            ),
            (
                "changed and added",
                |p| {
                    p[1].1 = b"9".to_vec();
                    p.push(("c".into(), b"3".to_vec()));
                },
                &[
                    ("a", "9"),
                    ("set-cookie", "x"),
                    ("set-cookie", "y"),
                    ("b", "2"),
                    ("c", "3"),
                ],
            ),
        ];
        for (case, change, expected) in cases {
            let mut parts = response_with(ORIGINAL);
            let mut pairs = response_pairs(&parts);
            change(&mut pairs);
            apply_response_pairs(&mut parts, &pairs);
            let expected: Vec<(String, String)> = expected
                .iter()
                .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
                .collect();
            assert_eq!(header_list(&parts.headers), expected, "{case}");
        }
    }

    #[test]
    fn host_follows_authority_and_absolute_uris_become_origin_form() {
        let request = http::Request::get("http://svc.local/a?b=1")
            .header("x-one", "1")
            .body(())
            .unwrap();
        let (mut parts, ()) = request.into_parts();
        let mut pairs = request_pairs(&parts, "http");
        pairs[0].1 = b"other.local".to_vec();
        apply_request_pairs(&mut parts, &pairs);
        assert_eq!(parts.uri, "/a?b=1");
        assert_eq!(parts.headers["host"], "other.local");

        let request = http::Request::get("/")
            .header("host", "svc.local")
            .body(())
            .unwrap();
        let (mut parts, ()) = request.into_parts();
        let pairs = request_pairs(&parts, "http");
        apply_request_pairs(&mut parts, &pairs);
        assert_eq!(
            header_list(&parts.headers),
            [("host".to_owned(), "svc.local".to_owned())]
        );
    }

    #[test]
    fn dropping_host_keeps_the_order_of_the_other_headers() {
        // A Host that is not visible ASCII gives an empty :authority, so Host goes; found by
        // the `headers` fuzz target (proxy/fuzz).
        let request = http::Request::get("/")
            .header("host", HeaderValue::from_bytes(b"bad\x9a").unwrap())
            .header("b", "1")
            .header("c", "2")
            .header("d", "3")
            .body(())
            .unwrap();
        let (mut parts, ()) = request.into_parts();
        let pairs = request_pairs(&parts, "http");
        apply_request_pairs(&mut parts, &pairs);
        let names: Vec<&str> = parts.headers.keys().map(HeaderName::as_str).collect();
        assert_eq!(names, ["b", "c", "d"]);
    }

    #[test]
    fn grpc_requests_get_trailers_only_replies_and_others_plain_ones() {
        let reply = |grpc_status, grpc_request| {
            local_response(
                LocalResponse {
                    status: 403,
                    details: "denied".into(),
                    body: b"no access\n".to_vec(),
                    headers: vec![("x-why".into(), b"policy".to_vec())],
                    grpc_status,
                },
                grpc_request,
            )
        };
        // What Envoy 1.40 answers for the same calls (checked with an AssemblyScript filter).
        let grpc = reply(Some(2), true);
        assert_eq!(grpc.status(), 200);
        assert_eq!(grpc.headers()["content-type"], "application/grpc");
        assert_eq!(grpc.headers()["grpc-status"], "2");
        assert_eq!(grpc.headers()["grpc-message"], "no access%0A");
        assert_eq!(grpc.headers()["x-why"], "policy");
        // No gRPC status given: the HTTP status mapped, 403 -> PERMISSION_DENIED.
        assert_eq!(reply(None, true).headers()["grpc-status"], "7");
        // A plain request ignores the gRPC status.
        let plain = reply(Some(2), false);
        assert_eq!(plain.status(), 403);
        assert_eq!(plain.headers()["content-type"], "text/plain");
        assert!(!plain.headers().contains_key("grpc-status"));
    }
}
