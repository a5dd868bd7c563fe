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
    // The request fails (see the test below), and the rest of the map is still applied.
    let invalid = apply_request_pairs(&mut parts, &pairs);
    assert_eq!(invalid, Err(InvalidHeader::Name("bad name".into())));
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
    apply_request_pairs(&mut parts, &pairs).unwrap();
    assert_eq!(parts.uri, "/a?b=1");
    assert_eq!(parts.headers["host"], "other.local");

    let request = http::Request::get("/")
        .header("host", "svc.local")
        .body(())
        .unwrap();
    let (mut parts, ()) = request.into_parts();
    let pairs = request_pairs(&parts, "http");
    apply_request_pairs(&mut parts, &pairs).unwrap();
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
    apply_request_pairs(&mut parts, &pairs).unwrap();
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

#[test]
fn a_request_header_http_cannot_carry_fails_with_envoys_text() {
    let (mut parts, ()) = http::Request::get("/").body(()).unwrap().into_parts();
    let pairs = vec![
        (":path".to_owned(), b"/".to_vec()),
        ("x-ok".to_owned(), b"1".to_vec()),
        ("x-bad".to_owned(), b"a\nb".to_vec()),
    ];
    let error = apply_request_pairs(&mut parts, &pairs).unwrap_err();
    assert_eq!(error.to_string(), "invalid header value for: x-bad");
    let pairs = vec![("bad name".to_owned(), b"v".to_vec())];
    let error = apply_request_pairs(&mut parts, &pairs).unwrap_err();
    assert_eq!(error.to_string(), "invalid header name: bad name");
    assert_eq!(escaped(b"a\nb\x01"), "a\\nb\\u0001");
}
