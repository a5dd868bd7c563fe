//! The path rules are matched against: the request path as the upstream will most likely
//! understand it, so `//admin`, `/%61dmin` or `/api/../admin` cannot slip past a rule on
//! `/admin/*`. Percent-escapes are decoded (an encoded `/` stays encoded), repeated slashes
//! merged, and `.` and `..` segments resolved; the query is dropped.

pub fn normalize(raw: &str) -> String {
    let path = raw.split('?').next().unwrap_or_default();
    let decoded = decode(path);
    let mut segments: Vec<&str> = Vec::new();
    for segment in decoded.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            other => segments.push(other),
        }
    }
    let mut normalized = format!("/{}", segments.join("/"));
    if decoded.ends_with('/') && normalized.len() > 1 {
        normalized.push('/');
    }
    normalized
}

/// Decodes `%XX` except `%2F` (a slash inside a segment is not a separator).
fn decode(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(byte) = bytes
                .get(i + 1..i + 3)
                .and_then(|hex| u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok())
            && byte != b'/'
        {
            out.push(byte);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::normalize;

    #[test]
    fn tricks_come_out_plain() {
        assert_eq!(normalize("//admin/x"), "/admin/x");
        assert_eq!(normalize("/%61dmin/x"), "/admin/x");
        assert_eq!(normalize("/api/../admin/x?y=1"), "/admin/x");
        assert_eq!(normalize("/./admin//internal/"), "/admin/internal/");
        assert_eq!(normalize("/a%2Fb"), "/a%2Fb");
        assert_eq!(normalize("/../../etc"), "/etc");
        assert_eq!(normalize(""), "/");
    }
}
