//! Whether an attempt's answer is worth another attempt, and how long to wait first.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sluice_sdk::ext::UpstreamFailure;

use crate::config::{Config, RetryOn};

/// What the response phase knows of one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    /// Set when the proxy could not get a response (its own reply carries `status`).
    pub failure: Option<UpstreamFailure>,
    /// `grpc-status` of a trailers-only gRPC response.
    pub grpc_status: Option<u32>,
}

/// Why an answer is retriable, for logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    ConnectFailure,
    Reset,
    Status,
    Grpc,
}

/// The condition that makes `answer` retriable, if one does. `method_may_repeat`: whether
/// the request's method may reach the upstream twice.
pub fn retriable(on: &RetryOn, answer: &Answer, method_may_repeat: bool) -> Option<Cause> {
    let gateway = matches!(answer.status, 502..=504);
    if let Some(failure) = &answer.failure {
        return match failure {
            // The request never reached an upstream: safe for any method.
            UpstreamFailure::ConnectFailure
            | UpstreamFailure::ConnectTimeout
            | UpstreamFailure::NoHealthyUpstream => {
                (on.connect_failure || on.server_error || (on.gateway_error && gateway))
                    .then_some(Cause::ConnectFailure)
            }
            UpstreamFailure::Reset | UpstreamFailure::ProtocolError => {
                ((on.reset || on.server_error) && method_may_repeat).then_some(Cause::Reset)
            }
            // The route's timeout spans all attempts: there is no time left for another.
            UpstreamFailure::Timeout => None,
            UpstreamFailure::PerTryTimeout | UpstreamFailure::Other(_) => {
                ((on.server_error || on.gateway_error) && method_may_repeat)
                    .then_some(Cause::Status)
            }
        };
    }
    // gRPC says in its status whether the call was processed, whatever the (POST) method.
    if let Some(code) = answer.grpc_status {
        return on.grpc_statuses.contains(&code).then_some(Cause::Grpc);
    }
    let by_status = (on.server_error && answer.status >= 500)
        || (on.gateway_error && gateway)
        || on.status_codes.contains(&answer.status);
    (by_status && method_may_repeat).then_some(Cause::Status)
}

/// The wait before retry number `retry` (1 for the first): fully jittered exponential
/// backoff, uniform in `[0, min(max, base * 2^(retry-1))]`, as Envoy does. `random` is a
/// uniform draw in `[0, 1)`.
pub fn backoff(config: &Config, retry: u32, random: f64) -> Duration {
    let exponent = retry.saturating_sub(1).min(30);
    let ceiling = config
        .backoff_base
        .saturating_mul(1 << exponent)
        .min(config.backoff_max);
    ceiling.mul_f64(random.clamp(0.0, 1.0))
}

/// How long `Retry-After` asks to wait: delta seconds or an HTTP date (IMF-fixdate). `None`
/// for a value that is neither.
pub fn retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = UNIX_EPOCH + Duration::from_secs(http_date(value)?);
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// Seconds since the epoch of `Sun, 06 Nov 1994 08:49:37 GMT`.
fn http_date(value: &str) -> Option<u64> {
    let mut parts = value.split_ascii_whitespace();
    let _weekday = parts.next()?;
    let day: u64 = parts.next()?.parse().ok()?;
    let month = parts.next()?;
    let year: u64 = parts.next()?.parse().ok()?;
    let time = parts.next()?;
    if parts.next()? != "GMT" || parts.next().is_some() {
        return None;
    }
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let month = MONTHS.iter().position(|m| *m == month)? as u64 + 1;
    let mut clock = time.split(':').map(|part| part.parse::<u64>().ok());
    let (hour, minute, second) = (clock.next()??, clock.next()??, clock.next()??);
    // Years past 9999 are not HTTP dates, and would overflow the arithmetic below.
    if !(1..=31).contains(&day)
        || !(1970..=9999).contains(&year)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    Some(days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second)
}

/// Days from 1970-01-01 to a Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: u64, month: u64, day: u64) -> u64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year / 400;
    let year_of_era = year - era * 400;
    let month_index = (month + 9) % 12;
    let day_of_year = (153 * month_index + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    (era * 146_097 + day_of_era).saturating_sub(719_468)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn on() -> RetryOn {
        Config::parse(b"").expect("defaults").retry_on
    }

    fn status(status: u16) -> Answer {
        Answer {
            status,
            failure: None,
            grpc_status: None,
        }
    }

    #[test]
    fn gateway_errors_are_retried_for_idempotent_methods_only() {
        assert_eq!(retriable(&on(), &status(503), true), Some(Cause::Status));
        assert_eq!(retriable(&on(), &status(503), false), None);
        assert_eq!(retriable(&on(), &status(500), true), None);
        assert_eq!(retriable(&on(), &status(200), true), None);
    }

    #[test]
    fn a_connect_failure_is_retried_whatever_the_method() {
        let failed = Answer {
            failure: Some(UpstreamFailure::ConnectFailure),
            ..status(503)
        };
        assert_eq!(
            retriable(&on(), &failed, false),
            Some(Cause::ConnectFailure)
        );
        let late = Answer {
            failure: Some(UpstreamFailure::Timeout),
            ..status(504)
        };
        assert_eq!(retriable(&on(), &late, true), None);
    }

    #[test]
    fn grpc_statuses_decide_for_grpc() {
        let unavailable = Answer {
            grpc_status: Some(14),
            ..status(200)
        };
        assert_eq!(retriable(&on(), &unavailable, false), Some(Cause::Grpc));
        let invalid = Answer {
            grpc_status: Some(3),
            ..status(200)
        };
        assert_eq!(retriable(&on(), &invalid, false), None);
    }

    #[test]
    fn backoff_grows_to_its_cap_and_jitters_below_it() {
        let config =
            Config::parse(br#"{"backoff": {"base": "10ms", "max": "50ms"}}"#).expect("valid");
        assert_eq!(backoff(&config, 1, 0.5), Duration::from_millis(5));
        assert_eq!(backoff(&config, 3, 0.5), Duration::from_millis(20));
        assert_eq!(backoff(&config, 9, 0.5), Duration::from_millis(25));
        assert_eq!(backoff(&config, 2, 0.0), Duration::ZERO);
    }

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let now = UNIX_EPOCH + Duration::from_secs(784_111_777 - 10);
        assert_eq!(retry_after("3", now), Some(Duration::from_secs(3)));
        assert_eq!(
            retry_after("Sun, 06 Nov 1994 08:49:37 GMT", now),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            retry_after(
                "Sun, 06 Nov 1994 08:49:37 GMT",
                now + Duration::from_secs(60)
            ),
            Some(Duration::ZERO)
        );
        assert_eq!(retry_after("soon", now), None);
        assert_eq!(
            retry_after("Sun, 06 Nov 99999999999999 08:49:37 GMT", now),
            None
        );
        assert_eq!(retry_after("Sun, 06 Nov 1994 08:49:37 PST", now), None);
    }
}
