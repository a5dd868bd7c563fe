//! The Proxy-Wasm "pairs" wire format for header maps, local-reply headers and map-valued
//! properties (ABI reference §3.3): a u32 count, then every key and value length, then every
//! key and value each followed by a NUL. All integers little-endian.

/// One header (or map entry): lowercase name, raw value bytes.
pub type Pair = (String, Vec<u8>);

/// cpp-host refuses more than this many pairs, or more than [`MAX_PAIRS_BYTES`].
pub const MAX_PAIRS: usize = 1024;
pub const MAX_PAIRS_BYTES: usize = 1 << 20;

/// Serializes pairs. An empty list is an empty buffer: the host then returns `(0, 0)`, the only
/// empty form every SDK accepts.
pub fn encode<'a>(pairs: impl ExactSizeIterator<Item = (&'a str, &'a [u8])> + Clone) -> Vec<u8> {
    let count = pairs.len();
    if count == 0 {
        return Vec::new();
    }
    let size: usize = 4 + pairs
        .clone()
        .map(|(k, v)| 8 + k.len() + v.len() + 2)
        .sum::<usize>();
    let mut out = Vec::with_capacity(size);
    out.extend_from_slice(&(count as u32).to_le_bytes());
    for (key, value) in pairs.clone() {
        out.extend_from_slice(&(key.len() as u32).to_le_bytes());
        out.extend_from_slice(&(value.len() as u32).to_le_bytes());
    }
    for (key, value) in pairs {
        out.extend_from_slice(key.as_bytes());
        out.push(0);
        out.extend_from_slice(value);
        out.push(0);
    }
    out
}

pub fn encode_pairs(pairs: &[Pair]) -> Vec<u8> {
    encode(pairs.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
}

/// Parses guest-supplied pairs. Like cpp-host, any inconsistency (short buffer, missing NUL,
/// trailing bytes, too many pairs, too large, a key that is not UTF-8) yields an empty list
/// rather than an error: the ABI has no status for it.
pub fn decode(bytes: &[u8]) -> Vec<Pair> {
    decode_strict(bytes).unwrap_or_default()
}

fn decode_strict(bytes: &[u8]) -> Option<Vec<Pair>> {
    if bytes.len() < 4 || bytes.len() > MAX_PAIRS_BYTES {
        return None;
    }
    let count = u32::from_le_bytes(bytes[0..4].try_into().ok()?) as usize;
    if count > MAX_PAIRS {
        return None;
    }
    let sizes_end = 4usize.checked_add(count.checked_mul(8)?)?;
    let sizes = bytes.get(4..sizes_end)?;
    let mut data = bytes.get(sizes_end..)?;
    let mut pairs = Vec::with_capacity(count);
    for entry in sizes.chunks_exact(8) {
        let key_len = u32::from_le_bytes(entry[0..4].try_into().ok()?) as usize;
        let value_len = u32::from_le_bytes(entry[4..8].try_into().ok()?) as usize;
        let (key, rest) = take_terminated(data, key_len)?;
        let (value, rest) = take_terminated(rest, value_len)?;
        data = rest;
        pairs.push((std::str::from_utf8(key).ok()?.to_owned(), value.to_vec()));
    }
    data.is_empty().then_some(pairs)
}

/// `len` bytes followed by a NUL, and what comes after.
fn take_terminated(data: &[u8], len: usize) -> Option<(&[u8], &[u8])> {
    let end = len.checked_add(1)?;
    let chunk = data.get(..end)?;
    (chunk[len] == 0).then(|| (&chunk[..len], &data[end..]))
}

/// Pairs from text, for tests.
#[cfg(test)]
pub fn test_pairs(list: &[(&str, &str)]) -> Vec<Pair> {
    list.iter()
        .map(|(k, v)| ((*k).to_owned(), v.as_bytes().to_vec()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use test_pairs as pairs;

    #[test]
    fn matches_the_reference_example_byte_for_byte() {
        let encoded = encode_pairs(&pairs(&[("a", "1"), ("b", "22")]));
        let expected: Vec<u8> = vec![
            2, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, b'a', 0, b'1', 0, b'b', 0,
            b'2', b'2', 0,
        ];
        assert_eq!(encoded, expected);
        assert_eq!(decode(&encoded), pairs(&[("a", "1"), ("b", "22")]));
    }

    #[test]
    fn empty_maps_are_empty_buffers_both_ways() {
        assert!(encode_pairs(&[]).is_empty());
        assert!(decode(&[0, 0, 0, 0]).is_empty());
        assert!(decode(&[]).is_empty());
    }

    #[test]
    fn round_trips_empty_values_and_binary_values() {
        let list = vec![
            ("x-empty".to_owned(), Vec::new()),
            ("x-bin".to_owned(), vec![0xff, 0x00, 0x01]),
        ];
        assert_eq!(decode(&encode_pairs(&list)), list);
    }

    #[test]
    fn inconsistent_input_is_an_empty_list() {
        let good = encode_pairs(&pairs(&[("key", "value")]));
        for bad in [
            &good[..good.len() - 1],                       // short
            &[good.as_slice(), &[0]].concat()[..],         // trailing byte
            &[&[2, 0, 0, 0][..], &good[4..]].concat()[..], // count too high
            &[0xff, 0xff, 0xff, 0xff][..],                 // absurd count
        ] {
            assert!(decode(bad).is_empty(), "{bad:?}");
        }
        let mut missing_nul = good.clone();
        let nul = 4 + 8 + 3;
        missing_nul[nul] = b'!';
        assert!(decode(&missing_nul).is_empty());
    }

    #[test]
    fn decoding_arbitrary_bytes_never_panics() {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..20_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let len = (state % 64) as usize;
            let bytes: Vec<u8> = (0..len).map(|i| (state >> (i % 56)) as u8 % 6).collect();
            let _ = decode(&bytes);
        }
    }
}
