//! A token bucket as stored in shared data: 16 bytes, the tokens left and when it was last
//! refilled (nanoseconds since the Unix epoch).

use std::time::Duration;

use crate::config::Config;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bucket {
    tokens: f64,
    refilled_ns: u64,
}

#[derive(Debug, PartialEq)]
pub enum Decision {
    Allowed,
    /// Empty: the next token comes after `retry_after`.
    Limited {
        retry_after: Duration,
    },
}

impl Bucket {
    pub fn full(config: &Config, now: Duration) -> Self {
        Self {
            tokens: f64::from(config.burst),
            refilled_ns: now.as_nanos() as u64,
        }
    }

    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let tokens = f64::from_le_bytes(bytes.get(..8)?.try_into().ok()?);
        let refilled_ns = u64::from_le_bytes(bytes.get(8..16)?.try_into().ok()?);
        Some(Self {
            tokens,
            refilled_ns,
        })
    }

    pub fn encode(&self) -> [u8; 16] {
        let mut bytes = [0; 16];
        bytes[..8].copy_from_slice(&self.tokens.to_le_bytes());
        bytes[8..].copy_from_slice(&self.refilled_ns.to_le_bytes());
        bytes
    }

    /// Refills for the time since the last refill, then takes one token if there is one.
    pub fn take(self, config: &Config, now: Duration) -> (Self, Decision) {
        let now_ns = now.as_nanos() as u64;
        let elapsed = now_ns.saturating_sub(self.refilled_ns) as f64;
        let per_token_ns = config.per.as_nanos() as f64 / f64::from(config.rate);
        let tokens = (self.tokens + elapsed / per_token_ns).min(f64::from(config.burst));
        let refilled = Self {
            tokens,
            refilled_ns: now_ns.max(self.refilled_ns),
        };
        if tokens >= 1.0 {
            let taken = Self {
                tokens: tokens - 1.0,
                ..refilled
            };
            (taken, Decision::Allowed)
        } else {
            let wait_ns = (1.0 - tokens) * per_token_ns;
            let retry_after = Duration::from_nanos(wait_ns.ceil() as u64);
            (refilled, Decision::Limited { retry_after })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_the_steady_rate() {
        let config = Config::parse(br#"{"rate": 2, "per": "1s", "burst": 3}"#).unwrap();
        let start = Duration::from_secs(1_000);
        let mut bucket = Bucket::full(&config, start);
        for _ in 0..3 {
            let (next, decision) = bucket.take(&config, start);
            assert_eq!(decision, Decision::Allowed);
            bucket = next;
        }
        let (bucket, decision) = bucket.take(&config, start);
        assert_eq!(
            decision,
            Decision::Limited {
                retry_after: Duration::from_millis(500)
            }
        );
        // Half a second later one token is back (2 per second).
        let (bucket, decision) = bucket.take(&config, start + Duration::from_millis(500));
        assert_eq!(decision, Decision::Allowed);
        let (_, decision) = bucket.take(&config, start + Duration::from_millis(600));
        assert!(matches!(decision, Decision::Limited { .. }));
        assert_eq!(Bucket::decode(&bucket.encode()), Some(bucket));
    }
}
