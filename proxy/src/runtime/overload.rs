//! Shedding load before the kernel's OOM killer decides: with `overload: { max_memory }`, a
//! sampler reads the process's resident memory ten times a second; past the bound the proxy
//! sheds, closing new connections at accept and answering new requests 503 `overload`, until
//! memory falls under 95% of the bound. Requests in flight finish; the admin endpoint is not
//! shed, so `/metrics` shows why (`sluice_overloaded`).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use prometheus::IntGauge;

const SAMPLE_EVERY: Duration = Duration::from_millis(100);

pub struct Overload {
    /// The bound in bytes; 0: none.
    limit: AtomicU64,
    shedding: AtomicBool,
    gauge: IntGauge,
    /// The sampler thread starts with the first bound (most proxies never set one).
    sampling: AtomicBool,
}

impl Overload {
    pub fn new(gauge: IntGauge) -> Arc<Self> {
        Arc::new(Self {
            limit: AtomicU64::new(0),
            shedding: AtomicBool::new(false),
            gauge,
            sampling: AtomicBool::new(false),
        })
    }

    /// The bound from the config now serving (`None`: no bound, never shed). The first bound
    /// starts the sampler, which stops when this is dropped.
    pub fn set_limit(self: &Arc<Self>, bytes: Option<u64>) {
        self.limit.store(bytes.unwrap_or(0), Ordering::Relaxed);
        if bytes.is_none() {
            self.set_shedding(false);
            return;
        }
        if !self.sampling.swap(true, Ordering::Relaxed) {
            let weak = Arc::downgrade(self);
            let sampler = std::thread::Builder::new()
                .name("sluice-overload".into())
                .spawn(move || sample(&weak));
            if let Err(error) = sampler {
                tracing::error!(%error, "cannot start the memory sampler; overload.max_memory is not enforced");
            }
        }
    }

    /// Whether new connections and requests are being shed.
    pub fn is_shedding(&self) -> bool {
        self.shedding.load(Ordering::Relaxed)
    }

    /// Decides from one reading of resident memory.
    fn observe(&self, resident: u64) {
        let limit = self.limit.load(Ordering::Relaxed);
        if limit == 0 {
            return;
        }
        let shedding = self.is_shedding();
        if !shedding && resident > limit {
            tracing::warn!(
                resident,
                limit,
                "memory past overload.max_memory: shedding new connections and requests"
            );
            self.set_shedding(true);
        } else if shedding && resident < limit / 100 * 95 {
            tracing::info!(
                resident,
                limit,
                "memory back under overload.max_memory: serving again"
            );
            self.set_shedding(false);
        }
    }

    fn set_shedding(&self, shedding: bool) {
        self.shedding.store(shedding, Ordering::Relaxed);
        self.gauge.set(i64::from(shedding));
    }
}

fn sample(overload: &Weak<Overload>) {
    loop {
        std::thread::sleep(SAMPLE_EVERY);
        let Some(overload) = overload.upgrade() else {
            return;
        };
        // Without a bound there is nothing to read memory for. A reading taken just before
        // the bound was lifted may have set shedding again: clear it.
        if overload.limit.load(Ordering::Relaxed) == 0 {
            if overload.is_shedding() {
                overload.set_shedding(false);
            }
            continue;
        }
        if let Some(resident) = resident_bytes() {
            overload.observe(resident);
        }
    }
}

/// This process's resident memory (`VmRSS` in /proc/self/status).
fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shedding_starts_past_the_bound_and_ends_under_95_percent() {
        let gauge = IntGauge::new("g", "g").unwrap();
        let overload = Overload::new(gauge.clone());
        overload.observe(u64::MAX);
        assert!(!overload.is_shedding(), "no bound: never");
        // The bound set directly: `set_limit` would start the sampler, reading real memory.
        overload.limit.store(1000, Ordering::Relaxed);
        overload.observe(1000);
        assert!(!overload.is_shedding());
        overload.observe(1001);
        assert!(overload.is_shedding());
        assert_eq!(gauge.get(), 1);
        overload.observe(960);
        assert!(overload.is_shedding(), "still within 5% of the bound");
        overload.observe(949);
        assert!(!overload.is_shedding());
        overload.observe(2000);
        overload.set_limit(None);
        assert!(
            !overload.is_shedding(),
            "a config without the bound stops it"
        );
        assert!(resident_bytes().is_some_and(|bytes| bytes > 1 << 20));
    }
}
