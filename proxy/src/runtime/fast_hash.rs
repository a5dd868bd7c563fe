//! A fast hash for maps whose keys the proxy makes or configures itself (context ids, upstream
//! endpoints), never a client: they need no protection from crafted collisions, and SipHash,
//! the standard maps' default, showed in per-request profiles. Each word is mixed in with a
//! rotate, a xor and a multiply.

use std::hash::{BuildHasherDefault, Hasher};

pub type FastHashing = BuildHasherDefault<FastHasher>;

#[derive(Debug, Default, Clone, Copy)]
pub struct FastHasher(u64);

impl Hasher for FastHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
    }

    fn write_u8(&mut self, value: u8) {
        self.write_u64(value.into());
    }

    fn write_u16(&mut self, value: u16) {
        self.write_u64(value.into());
    }

    fn write_u32(&mut self, value: u32) {
        self.write_u64(value.into());
    }

    fn write_u64(&mut self, value: u64) {
        self.0 = (self.0.rotate_left(5) ^ value).wrapping_mul(0x517c_c1b7_2722_0a95);
    }

    fn write_usize(&mut self, value: usize) {
        self.write_u64(value as u64);
    }
}

#[cfg(test)]
mod tests {
    use std::hash::BuildHasher;
    use std::net::SocketAddr;

    use super::*;

    fn distinct<T: std::hash::Hash>(keys: &[T]) -> usize {
        let hashing = FastHashing::default();
        let mut hashes: Vec<u64> = keys.iter().map(|k| hashing.hash_one(k)).collect();
        hashes.sort_unstable();
        hashes.dedup();
        hashes.len()
    }

    #[test]
    fn keys_that_differ_in_any_part_hash_apart() {
        let endpoints: Vec<(SocketAddr, u64)> = [
            ("127.0.0.1:8080", 0),
            ("127.0.0.1:8081", 0),
            ("127.0.0.2:8080", 0),
            ("127.0.0.1:8080", 7),
            ("[::1]:8080", 0),
            ("[::2]:8080", 0),
        ]
        .iter()
        .map(|(addr, transport)| (addr.parse().unwrap(), *transport))
        .collect();
        assert_eq!(distinct(&endpoints), endpoints.len());
        let ids: Vec<u32> = (0..10_000).collect();
        assert_eq!(distinct(&ids), ids.len());
        let hashing = FastHashing::default();
        assert_eq!(
            hashing.hash_one(endpoints[0]),
            hashing.hash_one(endpoints[0])
        );
    }
}
