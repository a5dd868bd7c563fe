//! The host's way between hyper's header maps and the pairs a filter sees and edits: a
//! request with arbitrary headers, changed by arbitrary edits (as `proxy_*_header_map_*`
//! calls make them), is written back without a panic, and the result holds exactly the
//! pairs HTTP can carry, in order.

#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use sluice::wasm::{Pair, apply_request_pairs, request_pairs};

#[derive(Arbitrary, Debug)]
struct Input {
    path: Vec<u8>,
    headers: Vec<(Vec<u8>, Vec<u8>)>,
    edits: Vec<Edit>,
}

#[derive(Arbitrary, Debug)]
enum Edit {
    Add(String, Vec<u8>),
    Replace(String, Vec<u8>),
    Remove(String),
    RemoveAt(u8),
    SetAt(u8, Vec<u8>),
}

fuzz_target!(|input: Input| {
    let mut request = http::Request::builder().uri(
        http::Uri::try_from(input.path.as_slice()).unwrap_or_else(|_| http::Uri::from_static("/")),
    );
    for (name, value) in &input.headers {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(name),
            http::HeaderValue::from_bytes(value),
        ) {
            request = request.header(name, value);
        }
    }
    let Ok(request) = request.body(()) else {
        return;
    };
    let (mut parts, ()) = request.into_parts();
    let mut pairs = request_pairs(&parts, "http");
    for edit in input.edits {
        apply(&mut pairs, edit);
    }
    apply_request_pairs(&mut parts, &pairs);

    // What HTTP can carry of the edited pairs, in order, is what the request now has.
    let expected: Vec<(String, Vec<u8>)> = pairs
        .iter()
        .filter(|(name, _)| !name.starts_with(':'))
        .filter(|(name, value)| {
            http::HeaderName::from_bytes(name.as_bytes()).is_ok()
                && http::HeaderValue::from_bytes(value).is_ok()
        })
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect();
    let mut grouped: Vec<(String, Vec<u8>)> = Vec::new();
    // A header map keeps the values of a name together, in the order they came.
    for (name, _) in &expected {
        if grouped.iter().any(|(seen, _)| seen == name) {
            continue;
        }
        grouped.extend(expected.iter().filter(|(n, _)| n == name).cloned());
    }
    let actual: Vec<(String, Vec<u8>)> = parts
        .headers
        .iter()
        .filter(|(name, _)| *name != http::header::HOST)
        .map(|(name, value)| (name.as_str().to_owned(), value.as_bytes().to_vec()))
        .collect();
    let grouped: Vec<(String, Vec<u8>)> =
        grouped.into_iter().filter(|(n, _)| n != "host").collect();
    assert_eq!(actual, grouped);
});

fn apply(pairs: &mut Vec<Pair>, edit: Edit) {
    match edit {
        Edit::Add(name, value) => pairs.push((name.to_ascii_lowercase(), value)),
        Edit::Replace(name, value) => {
            let name = name.to_ascii_lowercase();
            pairs.retain(|(n, _)| *n != name);
            pairs.push((name, value));
        }
        Edit::Remove(name) => {
            let name = name.to_ascii_lowercase();
            pairs.retain(|(n, _)| *n != name);
        }
        Edit::RemoveAt(index) => {
            if !pairs.is_empty() {
                pairs.remove(usize::from(index) % pairs.len());
            }
        }
        Edit::SetAt(index, value) => {
            if !pairs.is_empty() {
                let index = usize::from(index) % pairs.len();
                pairs[index].1 = value;
            }
        }
    }
}
