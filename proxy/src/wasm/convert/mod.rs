//! Between hyper's request/response parts and the pairs list a filter sees: pseudo-headers
//! (`:method`, `:scheme`, `:authority`, `:path`; `:status`) first, then the headers, names
//! lowercase.

use crate::http::ReplyDetails;
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
/// A header a filter wrote that HTTP cannot carry (a space in a name, a newline in a value).
/// On the request path Envoy fails the request with 503 and this text as the body, when it
/// encodes the request for the upstream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidHeader {
    #[error("invalid header name: {0}")]
    Name(String),
    #[error("invalid header value for: {0}")]
    Value(String),
}

/// Writes the filters' request header pairs back into `parts`. A header HTTP cannot carry
/// fails the request, as in Envoy, instead of reaching the upstream.
pub fn apply_request_pairs(
    parts: &mut request::Parts,
    pairs: &[Pair],
) -> Result<(), InvalidHeader> {
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
    let invalid = apply_headers(&mut parts.headers, pairs, Some(excluded));
    if let Some(host) = host
        && parts.headers.get(http::header::HOST) != Some(&host)
    {
        parts.headers.insert(http::header::HOST, host);
    }
    invalid.map_or(Ok(()), Err)
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
    // Response headers go on without it (see `insert_or_drop`).
    if let Some(error) = apply_headers(&mut parts.headers, pairs, None) {
        tracing::debug!(%error, "dropping a response header a filter set that HTTP cannot carry");
    }
}

/// Makes `headers` what the filters' `pairs` say (pseudo-headers aside), given that the pairs
/// started as `headers` in iteration order without `excluded`. Filters mostly read, or add a
/// header or two: when every original header is still there, in order, the map is kept and
/// only the added pairs are parsed and appended. Otherwise the map is rebuilt without
/// `excluded` (the caller sets it), and headers that kept their place reuse their parsed name
/// and value.
/// Returns the first header it left out because HTTP cannot carry it.
fn apply_headers(
    headers: &mut HeaderMap,
    pairs: &[Pair],
    excluded: Option<Excluded<'_>>,
) -> Option<InvalidHeader> {
    let mut invalid = None;
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
            note_invalid(&mut invalid, insert(headers, name, value));
        }
        return invalid;
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
            _ => note_invalid(&mut invalid, insert(headers, &pair.0, &pair.1)),
        }
    }
    invalid
}

fn note_invalid(first: &mut Option<InvalidHeader>, result: Result<(), InvalidHeader>) {
    if let Err(error) = result {
        first.get_or_insert(error);
    }
}

fn same_header((name, value): (&HeaderName, &HeaderValue), (pair_name, pair_value): &Pair) -> bool {
    name.as_str() == pair_name && value.as_bytes() == pair_value.as_slice()
}

pub fn pairs_header_map(pairs: Vec<Pair>) -> HeaderMap {
    let mut headers = HeaderMap::with_capacity(pairs.len());
    for (name, value) in pairs {
        insert_or_drop(&mut headers, &name, &value);
    }
    headers
}

/// Appends one pair. A header HTTP cannot carry (a newline in a value, a space in a name) is
/// left out, since forwarding it would corrupt the message; the caller decides what that
/// costs the stream.
fn insert(headers: &mut HeaderMap, name: &str, value: &[u8]) -> Result<(), InvalidHeader> {
    let Ok(parsed) = HeaderName::from_bytes(name.as_bytes()) else {
        return Err(InvalidHeader::Name(escaped(name.as_bytes())));
    };
    let Ok(value) = HeaderValue::from_bytes(value) else {
        return Err(InvalidHeader::Value(escaped(name.as_bytes())));
    };
    headers.append(parsed, value);
    Ok(())
}

/// A header name for a message, control characters escaped as in JSON (as Envoy prints it).
fn escaped(name: &[u8]) -> String {
    let mut out = String::with_capacity(name.len());
    for c in String::from_utf8_lossy(name).chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out
}

/// Appends one pair where a header HTTP cannot carry can only be left out (response headers,
/// trailers, a filter's own reply): Envoy writes such bytes as they are, which corrupts an
/// HTTP/1 message, so Sluice drops the header and says so.
fn insert_or_drop(headers: &mut HeaderMap, name: &str, value: &[u8]) {
    if let Err(error) = insert(headers, name, value) {
        tracing::debug!(%error, "dropping a header a filter set that HTTP cannot carry");
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
        insert_or_drop(&mut headers, name, value);
    }
    let body = if grpc_request {
        let grpc_status = local
            .grpc_status
            .unwrap_or_else(|| grpc_reply::status_for(status));
        grpc_reply::add_status_headers(&mut headers, grpc_status, &local.body);
        ProxyBody::Empty
    } else {
        // Envoy sends a filter's reply with its length, not in chunks, and then its type.
        if !local.body.is_empty() {
            headers.insert(
                http::header::CONTENT_LENGTH,
                HeaderValue::from(local.body.len()),
            );
            if !headers.contains_key(http::header::CONTENT_TYPE) {
                headers.insert(
                    http::header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain"),
                );
            }
        }
        ProxyBody::full(local.body)
    };
    let mut response = http::Response::new(body);
    *response.status_mut() = if grpc_request { StatusCode::OK } else { status };
    *response.headers_mut() = headers;
    // Envoy's `response.code_details` of a filter's reply: the details it gave, spaces as `_`.
    response
        .extensions_mut()
        .insert(ReplyDetails(local.details.replace(' ', "_")));
    response
}

#[cfg(test)]
mod tests;
