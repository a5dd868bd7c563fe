//! One cluster's breaker, as stored in shared data (JSON): closed, open until a time, or
//! half-open with probes in flight; the failures in a row and per second over the rate
//! window; and the requests in flight. Pure functions of the state, the config and the time,
//! so the rules are tested without a host.

use serde::{Deserialize, Serialize};

use crate::config::Config;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Breaker {
    pub state: State,
    /// Failures in a row while closed.
    pub consecutive: u32,
    /// Per second (Unix seconds): requests and failures, within the rate window.
    pub seconds: Vec<(u64, u32, u32)>,
    pub in_flight: u32,
    pub probes: u32,
    /// When the current half-open round began (probes outstanding longer than `open_for` are
    /// taken as lost: a VM that failed mid-request never reports back).
    #[serde(default)]
    pub half_open_since_ms: u64,
    /// How long the breaker stays open this time (doubles after a failed probe).
    pub open_for_ms: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub enum State {
    #[default]
    Closed,
    Open {
        until_ms: u64,
        why: String,
    },
    HalfOpen,
}

/// Whether a new request may go.
#[derive(Debug, PartialEq)]
pub enum Admission {
    Go { probe: bool },
    Refused(String),
}

/// How an admitted request ended, as far as the upstream is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    Failure,
    /// No upstream verdict (the client went away first): it only frees its place.
    Unknown,
}

/// A transition worth a log line and a metric.
#[derive(Debug, PartialEq)]
pub enum Transition {
    None,
    Opened(String),
    Closed,
}

impl Breaker {
    pub fn admit(&mut self, config: &Config, now_ms: u64) -> Admission {
        if let State::Open { until_ms, why } = &self.state {
            if now_ms < *until_ms {
                return Admission::Refused(format!("open: {why}"));
            }
            self.state = State::HalfOpen;
            self.probes = 0;
            self.half_open_since_ms = now_ms;
            // Whatever was in flight when it opened has had `open_for` to end; a count that
            // is still up is one no VM will bring down.
            self.in_flight = 0;
        }
        if self.state == State::HalfOpen {
            if self.probes >= config.half_open_probes
                && now_ms.saturating_sub(self.half_open_since_ms) >= ms(config.open_for)
            {
                self.probes = 0;
                self.half_open_since_ms = now_ms;
            }
            if self.probes >= config.half_open_probes {
                return Admission::Refused("half-open: a probe is in flight".into());
            }
            self.probes += 1;
            self.in_flight += 1;
            return Admission::Go { probe: true };
        }
        if config.max_requests > 0 && self.in_flight >= config.max_requests {
            return Admission::Refused(format!("max_requests {} reached", config.max_requests));
        }
        self.in_flight += 1;
        Admission::Go { probe: false }
    }

    /// Records how an admitted request ended.
    pub fn finish(
        &mut self,
        config: &Config,
        probe: bool,
        outcome: Outcome,
        now_ms: u64,
    ) -> Transition {
        self.in_flight = self.in_flight.saturating_sub(1);
        if probe {
            self.probes = self.probes.saturating_sub(1);
        }
        let failed = match outcome {
            Outcome::Unknown => return Transition::None,
            Outcome::Failure => true,
            Outcome::Success => false,
        };
        if probe && self.state == State::HalfOpen {
            return if failed {
                let open_for =
                    (self.open_for_ms.max(ms(config.open_for)) * 2).min(ms(config.max_open_for));
                self.open(now_ms, open_for, "the half-open probe failed".into())
            } else {
                self.close(config);
                Transition::Closed
            };
        }
        if self.state != State::Closed {
            return Transition::None;
        }
        self.count(config, failed, now_ms);
        if failed {
            self.consecutive += 1;
            if config.consecutive_failures > 0 && self.consecutive >= config.consecutive_failures {
                let why = format!("{} failures in a row", self.consecutive);
                return self.open(now_ms, ms(config.open_for), why);
            }
        } else {
            self.consecutive = 0;
        }
        if let Some(rate) = &config.failure_rate {
            let (total, failures) = self
                .seconds
                .iter()
                .fold((0, 0), |(t, f), (_, total, failed)| (t + total, f + failed));
            if total >= rate.min_requests && failures * 100 >= rate.threshold * total {
                let why = format!(
                    "{failures} of {total} requests failed in {}s",
                    rate.window.as_secs()
                );
                return self.open(now_ms, ms(config.open_for), why);
            }
        }
        Transition::None
    }

    fn count(&mut self, config: &Config, failed: bool, now_ms: u64) {
        let Some(rate) = &config.failure_rate else {
            return;
        };
        let second = now_ms / 1000;
        let oldest = second.saturating_sub(rate.window.as_secs().max(1) - 1);
        self.seconds.retain(|(s, _, _)| *s >= oldest);
        match self.seconds.iter_mut().find(|(s, _, _)| *s == second) {
            Some((_, total, failures)) => {
                *total += 1;
                *failures += u32::from(failed);
            }
            None => self.seconds.push((second, 1, u32::from(failed))),
        }
    }

    fn open(&mut self, now_ms: u64, open_for_ms: u64, why: String) -> Transition {
        self.state = State::Open {
            until_ms: now_ms + open_for_ms,
            why: why.clone(),
        };
        self.open_for_ms = open_for_ms;
        self.consecutive = 0;
        self.seconds.clear();
        Transition::Opened(why)
    }

    fn close(&mut self, config: &Config) {
        self.state = State::Closed;
        self.consecutive = 0;
        self.seconds.clear();
        self.open_for_ms = ms(config.open_for);
    }
}

fn ms(duration: std::time::Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(failed: bool) -> Outcome {
        if failed {
            Outcome::Failure
        } else {
            Outcome::Success
        }
    }

    fn config(json: &str) -> Config {
        Config::parse(json.as_bytes()).unwrap()
    }

    #[test]
    fn failures_in_a_row_open_it_and_a_good_probe_closes_it() {
        let config = config(r#"{"consecutive_failures": 2, "open_for": "1s"}"#);
        let mut breaker = Breaker::default();
        for _ in 0..2 {
            assert_eq!(breaker.admit(&config, 0), Admission::Go { probe: false });
        }
        assert_eq!(
            breaker.finish(&config, false, Outcome::Failure, 10),
            Transition::None
        );
        assert_eq!(
            breaker.finish(&config, false, Outcome::Failure, 20),
            Transition::Opened("2 failures in a row".into())
        );
        assert_eq!(
            breaker.admit(&config, 500),
            Admission::Refused("open: 2 failures in a row".into())
        );
        // After a second, one probe goes; others wait for it.
        assert_eq!(breaker.admit(&config, 1020), Admission::Go { probe: true });
        assert!(matches!(
            breaker.admit(&config, 1021),
            Admission::Refused(_)
        ));
        assert_eq!(
            breaker.finish(&config, true, Outcome::Success, 1030),
            Transition::Closed
        );
        assert_eq!(breaker.admit(&config, 1040), Admission::Go { probe: false });
        assert_eq!(breaker.in_flight, 1);
    }

    #[test]
    fn a_failed_probe_doubles_the_wait() {
        let config =
            config(r#"{"consecutive_failures": 1, "open_for": "1s", "max_open_for": "3s"}"#);
        let mut breaker = Breaker::default();
        breaker.admit(&config, 0);
        breaker.finish(&config, false, Outcome::Failure, 0);
        breaker.admit(&config, 1000);
        assert!(matches!(
            breaker.finish(&config, true, Outcome::Failure, 1000),
            Transition::Opened(_)
        ));
        assert!(matches!(
            breaker.admit(&config, 2999),
            Admission::Refused(_)
        ));
        assert_eq!(breaker.admit(&config, 3000), Admission::Go { probe: true });
        breaker.finish(&config, true, Outcome::Failure, 3000);
        // Doubling stops at max_open_for.
        assert!(matches!(
            breaker.admit(&config, 5999),
            Admission::Refused(_)
        ));
        assert_eq!(breaker.admit(&config, 6000), Admission::Go { probe: true });
    }

    #[test]
    fn a_failure_rate_over_the_window_opens_it() {
        let config = config(
            r#"{"consecutive_failures": 0, "failure_rate": {"threshold": 50, "window": "10s", "min_requests": 4}}"#,
        );
        let mut breaker = Breaker::default();
        let outcomes = [false, true, false, true];
        let mut last = Transition::None;
        for (i, failed) in outcomes.into_iter().enumerate() {
            breaker.admit(&config, i as u64 * 1000);
            last = breaker.finish(&config, false, outcome(failed), i as u64 * 1000);
        }
        assert_eq!(
            last,
            Transition::Opened("2 of 4 requests failed in 10s".into())
        );
        // Old seconds leave the window.
        let mut breaker = Breaker::default();
        for (i, failed) in [true, true, false, false].into_iter().enumerate() {
            breaker.admit(&config, i as u64 * 6000);
            last = breaker.finish(&config, false, outcome(failed), i as u64 * 6000);
        }
        assert_eq!(last, Transition::None);
    }

    #[test]
    fn lost_probes_and_unknown_outcomes_do_not_wedge_it() {
        let config = config(r#"{"consecutive_failures": 1, "open_for": "1s"}"#);
        let mut breaker = Breaker::default();
        breaker.admit(&config, 0);
        breaker.finish(&config, false, Outcome::Failure, 0);
        // A probe whose VM never reports back...
        assert_eq!(breaker.admit(&config, 1000), Admission::Go { probe: true });
        assert!(matches!(
            breaker.admit(&config, 1500),
            Admission::Refused(_)
        ));
        // ...is taken as lost after open_for, and another probe goes.
        assert_eq!(breaker.admit(&config, 2000), Admission::Go { probe: true });
        // A client that left is no verdict: the breaker stays half-open.
        assert_eq!(
            breaker.finish(&config, true, Outcome::Unknown, 2100),
            Transition::None
        );
        assert_eq!(breaker.state, State::HalfOpen);
    }

    #[test]
    fn concurrency_is_capped() {
        let config = config(r#"{"max_requests": 2}"#);
        let mut breaker = Breaker::default();
        breaker.admit(&config, 0);
        breaker.admit(&config, 0);
        assert_eq!(
            breaker.admit(&config, 0),
            Admission::Refused("max_requests 2 reached".into())
        );
        breaker.finish(&config, false, Outcome::Success, 0);
        assert_eq!(breaker.admit(&config, 0), Admission::Go { probe: false });
    }
}
