//! Metric names with their labels: `name;key=value;key=value`. Values are cleaned so they
//! cannot break the format, and cut to a sane length.

const MAX_VALUE: usize = 64;

pub fn series_name(name: &str, labels: &[(&str, &str)]) -> String {
    let mut out = name.to_owned();
    for (key, value) in labels {
        out.push(';');
        out.push_str(key);
        out.push('=');
        out.extend(value.chars().take(MAX_VALUE).map(|c| {
            if c == ';' || c == '=' || c.is_control() {
                '_'
            } else {
                c
            }
        }));
    }
    out
}

/// `2xx` for 200..=299 and so on; `none` when no response was sent (the stream was reset).
pub fn status_class(code: u64) -> &'static str {
    match code / 100 {
        1 => "1xx",
        2 => "2xx",
        3 => "3xx",
        4 => "4xx",
        5 => "5xx",
        _ => "none",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_cannot_break_the_name() {
        assert_eq!(
            series_name(
                "requests_total",
                &[("route", "a;b=c"), ("status_class", "2xx")]
            ),
            "requests_total;route=a_b_c;status_class=2xx"
        );
        assert_eq!(
            series_name("x", &[("route", &"r".repeat(100))]).len(),
            "x;route=".len() + 64
        );
        assert_eq!(status_class(503), "5xx");
        assert_eq!(status_class(0), "none");
    }
}
