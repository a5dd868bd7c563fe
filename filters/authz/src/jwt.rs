//! JSON Web Tokens: signature checks (HS256, RS256, ES256) against keys given inline as a
//! JWKS, and the time, issuer and audience checks. Anything else (`alg: none`, other
//! algorithms, a key of the wrong type) is refused.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde::Deserialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// One verification key, from a JWK.
pub enum Key {
    Hmac {
        kid: Option<String>,
        secret: Vec<u8>,
    },
    Rsa {
        kid: Option<String>,
        key: rsa::RsaPublicKey,
    },
    Ec {
        kid: Option<String>,
        key: p256::ecdsa::VerifyingKey,
    },
}

#[derive(Deserialize)]
struct Jwk {
    kty: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    crv: Option<String>,
    #[serde(default)]
    n: Option<String>,
    #[serde(default)]
    e: Option<String>,
    #[serde(default)]
    x: Option<String>,
    #[serde(default)]
    y: Option<String>,
    #[serde(default)]
    k: Option<String>,
}

/// What a token must satisfy besides its signature.
pub struct Checks {
    pub issuer: Option<String>,
    pub audiences: Vec<String>,
    pub leeway_seconds: u64,
}

/// Why a token was refused; shown to the client in the 401 body.
pub type Refusal = String;

/// Parses a JWKS (`{"keys": [...]}`); the error names the key and the field.
pub fn parse_jwks(jwks: &Value) -> Result<Vec<Key>, String> {
    let keys = jwks
        .get("keys")
        .and_then(Value::as_array)
        .ok_or("must be a JWKS: {\"keys\": [...]}")?;
    keys.iter()
        .enumerate()
        .map(|(index, value)| {
            let jwk: Jwk =
                serde_json::from_value(value.clone()).map_err(|e| format!("keys[{index}]: {e}"))?;
            parse_jwk(jwk).map_err(|e| format!("keys[{index}]: {e}"))
        })
        .collect()
}

fn parse_jwk(jwk: Jwk) -> Result<Key, String> {
    let field = |value: Option<String>, name: &str| -> Result<Vec<u8>, String> {
        let text = value.ok_or_else(|| format!("a {} key needs `{name}`", jwk.kty))?;
        URL_SAFE_NO_PAD
            .decode(text.trim_end_matches('='))
            .map_err(|e| format!("`{name}` is not base64url: {e}"))
    };
    match jwk.kty.as_str() {
        "oct" => Ok(Key::Hmac {
            secret: field(jwk.k.clone(), "k")?,
            kid: jwk.kid,
        }),
        "RSA" => {
            let n = rsa::BigUint::from_bytes_be(&field(jwk.n.clone(), "n")?);
            let e = rsa::BigUint::from_bytes_be(&field(jwk.e.clone(), "e")?);
            let key = rsa::RsaPublicKey::new(n, e).map_err(|e| format!("not an RSA key: {e}"))?;
            Ok(Key::Rsa { key, kid: jwk.kid })
        }
        "EC" => {
            if jwk.crv.as_deref() != Some("P-256") {
                return Err(format!("curve {:?} is not supported (P-256 is)", jwk.crv));
            }
            let x = field(jwk.x.clone(), "x")?;
            let y = field(jwk.y.clone(), "y")?;
            if x.len() != 32 || y.len() != 32 {
                return Err("`x` and `y` must be 32 bytes each".into());
            }
            let point = p256::EncodedPoint::from_affine_coordinates(
                p256::FieldBytes::from_slice(&x),
                p256::FieldBytes::from_slice(&y),
                false,
            );
            let key = p256::ecdsa::VerifyingKey::from_encoded_point(&point)
                .map_err(|_| "the point is not on P-256".to_owned())?;
            Ok(Key::Ec { key, kid: jwk.kid })
        }
        other => Err(format!(
            "key type {other:?} is not supported (oct, RSA, EC)"
        )),
    }
}

/// Verifies `token` and returns its claims.
pub fn verify(
    token: &str,
    keys: &[Key],
    checks: &Checks,
    now: u64,
) -> Result<Map<String, Value>, Refusal> {
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("the token is not a JWT (three base64url parts)".into());
    };
    let decode = |part: &str| {
        URL_SAFE_NO_PAD
            .decode(part)
            .map_err(|_| "the token is not base64url".to_owned())
    };
    let header: Map<String, Value> = serde_json::from_slice(&decode(header)?)
        .map_err(|_| "the token header is not JSON".to_owned())?;
    let claims: Map<String, Value> = serde_json::from_slice(&decode(payload)?)
        .map_err(|_| "the token payload is not a JSON object".to_owned())?;
    let signature = decode(signature)?;
    let signed = &token[..token.len() - token.rsplit('.').next().map_or(0, str::len) - 1];
    let alg = header.get("alg").and_then(Value::as_str).unwrap_or("");
    let kid = header.get("kid").and_then(Value::as_str);

    let candidates = keys.iter().filter(|key| {
        let key_kid = match key {
            Key::Hmac { kid, .. } | Key::Rsa { kid, .. } | Key::Ec { kid, .. } => kid.as_deref(),
        };
        kid.is_none() || key_kid.is_none() || key_kid == kid
    });
    let mut verified = false;
    for key in candidates {
        verified = match (alg, key) {
            ("HS256", Key::Hmac { secret, .. }) => Hmac::<Sha256>::new_from_slice(secret)
                .map(|mut mac| {
                    mac.update(signed.as_bytes());
                    mac.verify_slice(&signature).is_ok()
                })
                .unwrap_or(false),
            ("RS256", Key::Rsa { key, .. }) => {
                let digest = Sha256::digest(signed.as_bytes());
                key.verify(rsa::Pkcs1v15Sign::new::<Sha256>(), &digest, &signature)
                    .is_ok()
            }
            ("ES256", Key::Ec { key, .. }) => {
                use p256::ecdsa::signature::Verifier;
                p256::ecdsa::Signature::from_slice(&signature)
                    .is_ok_and(|sig| key.verify(signed.as_bytes(), &sig).is_ok())
            }
            _ => false,
        };
        if verified {
            break;
        }
    }
    if !matches!(alg, "HS256" | "RS256" | "ES256") {
        return Err(format!("algorithm {alg:?} is not accepted"));
    }
    if !verified {
        return Err("the token signature does not verify with any configured key".into());
    }
    check_claims(&claims, checks, now)?;
    Ok(claims)
}

fn check_claims(claims: &Map<String, Value>, checks: &Checks, now: u64) -> Result<(), Refusal> {
    // NumericDate may have a fraction; a time that is there but not a number is refused.
    let time = |name: &str| -> Result<Option<f64>, Refusal> {
        match claims.get(name) {
            None => Ok(None),
            Some(value) => value
                .as_f64()
                .map(Some)
                .ok_or_else(|| format!("the token's {name} is not a number")),
        }
    };
    let (now, leeway) = (now as f64, checks.leeway_seconds as f64);
    if let Some(exp) = time("exp")?
        && now > exp + leeway
    {
        return Err("the token has expired".into());
    }
    if let Some(nbf) = time("nbf")?
        && now + leeway < nbf
    {
        return Err("the token is not valid yet".into());
    }
    if let Some(issuer) = &checks.issuer
        && claims.get("iss").and_then(Value::as_str) != Some(issuer.as_str())
    {
        return Err("the token is from another issuer".into());
    }
    if !checks.audiences.is_empty() {
        let audiences: Vec<&str> = match claims.get("aud") {
            Some(Value::String(one)) => vec![one.as_str()],
            Some(Value::Array(many)) => many.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        };
        if !audiences
            .iter()
            .any(|aud| checks.audiences.iter().any(|a| a == aud))
        {
            return Err("the token is for another audience".into());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hs256(secret: &[u8], claims: &str) -> String {
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
        let payload = URL_SAFE_NO_PAD.encode(claims);
        let mut mac = Hmac::<Sha256>::new_from_slice(secret).unwrap();
        mac.update(format!("{header}.{payload}").as_bytes());
        let signature = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
        format!("{header}.{payload}.{signature}")
    }

    fn keys() -> Vec<Key> {
        let k = URL_SAFE_NO_PAD.encode(b"s3cret");
        parse_jwks(&serde_json::json!({"keys": [{"kty": "oct", "k": k}]})).unwrap()
    }

    fn checks() -> Checks {
        Checks {
            issuer: Some("https://issuer".into()),
            audiences: vec!["api".into()],
            leeway_seconds: 60,
        }
    }

    #[test]
    fn hs256_tokens_and_their_claims() {
        let good = hs256(
            b"s3cret",
            r#"{"sub":"ann","iss":"https://issuer","aud":["x","api"],"exp":2000}"#,
        );
        let claims = verify(&good, &keys(), &checks(), 1000).unwrap();
        assert_eq!(claims["sub"], "ann");

        let cases = [
            (
                hs256(b"wrong", r#"{"iss":"https://issuer","aud":"api"}"#),
                "does not verify",
            ),
            (
                hs256(
                    b"s3cret",
                    r#"{"iss":"https://issuer","aud":"api","exp":900}"#,
                ),
                "expired",
            ),
            (
                hs256(
                    b"s3cret",
                    r#"{"iss":"https://issuer","aud":"api","nbf":1100}"#,
                ),
                "not valid yet",
            ),
            (
                hs256(b"s3cret", r#"{"iss":"https://other","aud":"api"}"#),
                "another issuer",
            ),
            (
                hs256(b"s3cret", r#"{"iss":"https://issuer","aud":"web"}"#),
                "another audience",
            ),
            ("a.b".to_owned(), "not a JWT"),
        ];
        for (token, reason) in cases {
            let error = verify(&token, &keys(), &checks(), 1000).unwrap_err();
            assert!(error.contains(reason), "{error} / {reason}");
        }
        let fraction = hs256(
            b"s3cret",
            r#"{"iss":"https://issuer","aud":"api","exp":900.5}"#,
        );
        assert!(
            verify(&fraction, &keys(), &checks(), 1000)
                .unwrap_err()
                .contains("expired")
        );
        let text = hs256(
            b"s3cret",
            r#"{"iss":"https://issuer","aud":"api","exp":"never"}"#,
        );
        assert!(
            verify(&text, &keys(), &checks(), 1000)
                .unwrap_err()
                .contains("not a number")
        );
        // Within the leeway, an expired token still passes.
        let late = hs256(
            b"s3cret",
            r#"{"iss":"https://issuer","aud":"api","exp":950}"#,
        );
        assert!(verify(&late, &keys(), &checks(), 1000).is_ok());
    }

    #[test]
    fn alg_none_is_refused() {
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#);
        let payload = URL_SAFE_NO_PAD.encode(br#"{"iss":"https://issuer","aud":"api"}"#);
        let error = verify(&format!("{header}.{payload}."), &keys(), &checks(), 0).unwrap_err();
        assert!(error.contains("not accepted"), "{error}");
    }

    #[test]
    fn jwks_errors_name_the_key() {
        let error = parse_jwks(
            &serde_json::json!({"keys": [{"kty": "oct", "k": "AA"}, {"kty": "RSA", "n": "AQAB"}]}),
        )
        .err()
        .unwrap();
        assert_eq!(error, "keys[1]: a RSA key needs `e`");
        let error = parse_jwks(&serde_json::json!({"keys": [{"kty": "EC", "crv": "P-384"}]}))
            .err()
            .unwrap();
        assert!(error.contains("P-384"), "{error}");
    }
}
