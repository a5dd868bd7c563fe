//! Bearer tokens: the service checks `authorization: Bearer <token>` on every call when it has
//! a token; clients send theirs.

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::{Request, Status};

/// Server side: refuses calls without the token (lets every call through without one).
#[derive(Clone)]
pub struct RequireBearer {
    expected: Option<Vec<u8>>,
}

/// Client side: adds the token to every call.
#[derive(Clone)]
pub struct SendBearer {
    header: Option<MetadataValue<Ascii>>,
}

impl RequireBearer {
    pub fn new(token: Option<&str>) -> Self {
        Self {
            expected: token.map(|t| format!("Bearer {t}").into_bytes()),
        }
    }
}

impl Interceptor for RequireBearer {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let Some(expected) = &self.expected else {
            return Ok(request);
        };
        let given = request
            .metadata()
            .get("authorization")
            .map(|v| v.as_bytes())
            .unwrap_or_default();
        if constant_time_eq(given, expected) {
            Ok(request)
        } else {
            Err(Status::unauthenticated(
                "missing or wrong bearer token (set --token or SLUICE_CONTROL_TOKEN)",
            ))
        }
    }
}

impl SendBearer {
    /// `Err` when the token cannot be a header value.
    pub fn new(token: Option<&str>) -> Result<Self, String> {
        let header = token
            .map(|t| {
                format!("Bearer {t}")
                    .parse()
                    .map_err(|_| "the token has characters a header cannot carry".to_owned())
            })
            .transpose()?;
        Ok(Self { header })
    }
}

impl Interceptor for SendBearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(header) = &self.header {
            request
                .metadata_mut()
                .insert("authorization", header.clone());
        }
        Ok(request)
    }
}

/// Compares without stopping at the first difference, so timing tells nothing of the token.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_must_match_exactly() {
        let mut guard = RequireBearer::new(Some("s3cret"));
        let with = |value: &str| {
            let mut request = Request::new(());
            request
                .metadata_mut()
                .insert("authorization", value.parse().unwrap());
            request
        };
        assert!(guard.call(with("Bearer s3cret")).is_ok());
        assert!(guard.call(with("Bearer s3cre")).is_err());
        assert!(guard.call(Request::new(())).is_err());
        let mut open = RequireBearer::new(None);
        assert!(open.call(Request::new(())).is_ok());
    }
}
