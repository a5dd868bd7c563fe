//! The pairs wire format a guest hands the host (`proxy_set_header_map_pairs`, local-reply
//! headers): any bytes must decode without a panic, and whatever decodes must encode back to
//! exactly the same bytes, so the host never reads a map differently from how it writes one.

#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice::wasm::{decode_pairs, encode_pairs};

fuzz_target!(|bytes: &[u8]| {
    let pairs = decode_pairs(bytes);
    if !pairs.is_empty() {
        assert_eq!(encode_pairs(&pairs), bytes, "decoded {pairs:?}");
    }
});
