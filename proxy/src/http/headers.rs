//! Header rules of a proxy hop: hop-by-hop headers stop here, forwarding headers are added,
//! and the URI and `Host` are shaped for the upstream's protocol.

use std::net::SocketAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Uri, Version};

use crate::config::UpstreamProtocol;

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1).
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Is this an HTTP/1.1 upgrade request (WebSocket and the like)?
pub fn is_upgrade_request(version: Version, headers: &HeaderMap) -> bool {
    version == Version::HTTP_11
        && headers.contains_key(header::UPGRADE)
        && connection_has(headers, "upgrade")
}

fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    connection_tokens(headers).any(|t| t.eq_ignore_ascii_case(token))
}

fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// Removes hop-by-hop headers, including any the `Connection` header names. An upgrade keeps
/// `Connection: upgrade` and `Upgrade`, which the next hop needs to switch protocols.
pub fn remove_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // One pass over the names finds the hop-by-hop ones present: most messages carry none or
    // one (`Connection: keep-alive`), and a lookup per listed name costs more than the pass.
    let present: Vec<HeaderName> = headers
        .keys()
        .filter(|name| HOP_BY_HOP.contains(name))
        .cloned()
        .collect();
    if present.is_empty() && !headers.contains_key(header::TE) {
        return;
    }
    let named: Vec<HeaderName> = connection_tokens(headers)
        .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
        .filter(|name| !(keep_upgrade && name == header::UPGRADE))
        .collect();
    for name in named {
        headers.remove(name);
    }
    let upgrade = keep_upgrade
        .then(|| headers.get(header::UPGRADE).cloned())
        .flatten();
    for name in present {
        headers.remove(name);
    }
    // `TE: trailers` is the one TE value that must reach the upstream: gRPC requires it.
    let te_trailers = headers.get_all(header::TE).iter().any(|v| {
        v.to_str().is_ok_and(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("trailers"))
        })
    });
    headers.remove(header::TE);
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    if let Some(upgrade) = upgrade {
        headers.insert(header::UPGRADE, upgrade);
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// HTTP/2 clients may split `cookie` into one field per cookie (RFC 9113, 8.2.3); before
/// anyone sees the request they are one header again, joined with `; `, as Envoy's codec
/// does, so filters read every cookie and an HTTP/1.1 upstream gets the one header it expects.
pub fn join_http2_cookies(version: http::Version, headers: &mut HeaderMap) {
    if version != http::Version::HTTP_2 {
        return;
    }
    let mut cookies = headers.get_all(header::COOKIE).iter();
    let (Some(first), Some(_)) = (cookies.next(), cookies.next()) else {
        return;
    };
    let mut joined = first.as_bytes().to_vec();
    for cookie in headers.get_all(header::COOKIE).iter().skip(1) {
        joined.extend_from_slice(b"; ");
        joined.extend_from_slice(cookie.as_bytes());
    }
    if let Ok(value) = HeaderValue::from_bytes(&joined) {
        headers.insert(header::COOKIE, value);
    }
}

/// Identifies the request before anyone sees it: `x-forwarded-proto` (kept when an earlier
/// proxy set it) and an `x-request-id` when absent. Envoy adds both before its filters run.
pub fn add_request_identity(headers: &mut HeaderMap, scheme: &'static str) {
    if !headers.contains_key(&X_FORWARDED_PROTO) {
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(scheme));
    }
    if !headers.contains_key(&X_REQUEST_ID)
        && let Ok(value) = HeaderValue::from_bytes(&new_request_id())
    {
        headers.insert(X_REQUEST_ID, value);
    }
}

/// Appends the client to `x-forwarded-for` on the way to the upstream (after the filters, so
/// they see the headers Envoy's filters see). `client` is [`client_address`] of the peer.
pub fn append_forwarded_for(headers: &mut HeaderMap, client: &HeaderValue) {
    let value = match headers.get(&X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(existing) => {
            HeaderValue::from_bytes(&[existing.as_bytes(), b", ", client.as_bytes()].concat())
        }
        None => Ok(client.clone()),
    };
    if let Ok(value) = value {
        headers.insert(X_FORWARDED_FOR, value);
    }
}

/// The peer's IP address as `x-forwarded-for` carries it: made once per connection, since
/// formatting an address for every request showed in profiles.
pub fn client_address(peer: SocketAddr) -> HeaderValue {
    HeaderValue::try_from(peer.ip().to_string()).unwrap_or(HeaderValue::from_static("unknown"))
}

/// A random UUID (version 4), the form Envoy generates.
pub fn new_request_id() -> [u8; 36] {
    let bits = fastrand::u128(..);
    // Set the version (4) and variant (10xx) bits.
    uuid_text((bits & !(0xF << 76) & !(0x3 << 62)) | (0x4 << 76) | (0x2 << 62))
}

/// `bits` as a UUID's text, `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`. Written digit by digit into
/// a fixed buffer: this runs for every request, and both `format!` and pushing chars one by one
/// showed in profiles.
fn uuid_text(bits: u128) -> [u8; 36] {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut text = [b'-'; 36];
    // Two halves: shifting a u64 is one instruction, a u128 several.
    let (mut high, mut low) = ((bits >> 64) as u64, bits as u64);
    let mut at = text.len();
    for digit in (0..32).rev() {
        at -= 1;
        if matches!(at, 8 | 13 | 18 | 23) {
            at -= 1;
        }
        let half = if digit < 16 { &mut high } else { &mut low };
        text[at] = DIGITS[(*half & 0xF) as usize];
        *half >>= 4;
    }
    text
}

/// Shapes URI, `Host` and version for the upstream: HTTP/1.1 wants origin-form and a `Host`
/// header; HTTP/2 wants scheme and authority in the URI (`:scheme`, `:authority`).
pub fn shape_for_upstream(
    uri: &mut Uri,
    version: &mut Version,
    headers: &mut HeaderMap,
    protocol: UpstreamProtocol,
) {
    let authority = uri.authority().map(|a| a.as_str().to_owned()).or_else(|| {
        headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_owned)
    });
    let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
    match protocol {
        UpstreamProtocol::Http1 => {
            *version = Version::HTTP_11;
            if let Ok(origin_form) = path.parse() {
                *uri = origin_form;
            }
            if !headers.contains_key(header::HOST)
                && let Some(value) = authority.and_then(|a| HeaderValue::from_str(&a).ok())
            {
                headers.insert(header::HOST, value);
            }
        }
        UpstreamProtocol::Http2 => {
            *version = Version::HTTP_2;
            let authority = authority.unwrap_or_else(|| "localhost".to_owned());
            if let Ok(absolute) = format!("http://{authority}{path}").parse() {
                *uri = absolute;
            }
            headers.remove(header::HOST);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http2_cookies_become_one_header() {
        let mut headers = HeaderMap::new();
        headers.append(header::COOKIE, HeaderValue::from_static("a=1"));
        headers.append(header::COOKIE, HeaderValue::from_static("b=2"));
        let mut http1 = headers.clone();
        join_http2_cookies(http::Version::HTTP_2, &mut headers);
        assert_eq!(
            headers.get_all(header::COOKIE).iter().collect::<Vec<_>>(),
            ["a=1; b=2"]
        );
        join_http2_cookies(http::Version::HTTP_11, &mut http1);
        assert_eq!(
            http1.get_all(header::COOKIE).iter().count(),
            2,
            "HTTP/1.1 is left alone"
        );
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_are_removed() {
        let mut map = headers(&[
            ("connection", "keep-alive, x-secret"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("transfer-encoding", "chunked"),
            ("te", "gzip, trailers"),
            ("x-kept", "yes"),
        ]);
        remove_hop_by_hop(&mut map, false);
        let names: Vec<&str> = map.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["x-kept", "te"]);
        assert_eq!(map["te"], "trailers");
    }

    #[test]
    fn upgrades_keep_their_upgrade_headers() {
        let mut map = headers(&[
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
            ("keep-alive", "1"),
        ]);
        assert!(is_upgrade_request(Version::HTTP_11, &map));
        remove_hop_by_hop(&mut map, true);
        assert_eq!(map["upgrade"], "websocket");
        assert_eq!(map["connection"], "upgrade");
        assert!(!map.contains_key("keep-alive"));
    }

    #[test]
    fn forwarding_headers_append_and_fill_in() {
        let peer: SocketAddr = "10.1.2.3:5000".parse().unwrap();
        let mut map = headers(&[
            ("x-forwarded-for", "192.0.2.1"),
            ("x-forwarded-proto", "https"),
        ]);
        add_request_identity(&mut map, "http");
        append_forwarded_for(&mut map, &client_address(peer));
        assert_eq!(map["x-forwarded-for"], "192.0.2.1, 10.1.2.3");
        let mut first_hop = HeaderMap::new();
        append_forwarded_for(
            &mut first_hop,
            &client_address("[2001:db8::1]:80".parse().unwrap()),
        );
        assert_eq!(first_hop["x-forwarded-for"], "2001:db8::1");
        assert_eq!(map["x-forwarded-proto"], "https");
        let id = map["x-request-id"].to_str().unwrap().to_owned();
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4", "version 4 UUID: {id}");
        let bits = 0x0123_4567_89ab_cdef_fedc_ba98_7654_3210_u128;
        let hex = format!("{bits:032x}");
        let expected = format!(
            "{}-{}-{}-{}-{}",
            &hex[..8],
            &hex[8..12],
            &hex[12..16],
            &hex[16..20],
            &hex[20..]
        );
        assert_eq!(uuid_text(bits), expected.as_bytes());
        for _ in 0..100 {
            let id = String::from_utf8(new_request_id().to_vec()).unwrap();
            let groups: Vec<&str> = id.split('-').collect();
            assert_eq!(
                groups.iter().map(|g| g.len()).collect::<Vec<_>>(),
                [8, 4, 4, 4, 12],
                "{id}"
            );
            assert!(
                id.bytes().all(|b| b == b'-' || b.is_ascii_hexdigit()),
                "{id}"
            );
            assert!(!id.bytes().any(|b| b.is_ascii_uppercase()), "{id}");
            assert!(groups[2].starts_with('4'), "version 4: {id}");
            assert!("89ab".contains(&groups[3][..1]), "RFC 4122 variant: {id}");
        }

        let mut kept = headers(&[("x-request-id", "abc")]);
        add_request_identity(&mut kept, "http");
        assert_eq!(kept["x-request-id"], "abc");
        assert_eq!(kept["x-forwarded-proto"], "http");
    }

    #[test]
    fn uris_take_the_upstream_protocols_form() {
        let mut uri: Uri = "http://example.com/a?b=1".parse().unwrap();
        let mut version = Version::HTTP_2;
        let mut map = HeaderMap::new();
        shape_for_upstream(&mut uri, &mut version, &mut map, UpstreamProtocol::Http1);
        assert_eq!(uri, "/a?b=1");
        assert_eq!(version, Version::HTTP_11);
        assert_eq!(map["host"], "example.com");

        let mut uri: Uri = "/a".parse().unwrap();
        let mut map = headers(&[("host", "svc.local:8080")]);
        shape_for_upstream(&mut uri, &mut version, &mut map, UpstreamProtocol::Http2);
        assert_eq!(uri, "http://svc.local:8080/a");
        assert_eq!(version, Version::HTTP_2);
        assert!(!map.contains_key("host"));
    }
}
