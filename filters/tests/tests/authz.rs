//! filters/authz on the real host. The RS256 and ES256 tokens were signed once with
//! throwaway keys (only the public halves are here, as the JWKS); the HS256 ones are made by
//! the tests. Tokens expire in 2100 unless a test says otherwise.

use sluice_filter_tests::module;
use sluice_sdk::harness::{Harness, Reply};

/// The public keys of the signed tokens below.
const JWKS: &str = r#"{"keys": [{"kty": "RSA", "kid": "rsa-1", "n": "76oL0yWzGtlILt0wjdqcIWpRxHCNzbV8wbbpwHNlQBGd5sKn60hPJZ0drt4j5hjnwfjDm1KUFOiMYi9ra-KDBivUuzhYAv599N-ZRePc8TPDglABJEnj2eDGaxokr7cMCQdwDoV6O9JVSXXhbUnTiOQrD8b7Grgojy5kiJfd5f4ieoxp65i2c2M6XwhKpJsxVq68kQcHZRNqWFC6DPNLmBECgT0uibZJhDWs9iP59xCS8qItW2rOXHP5USZihi0XWxbTJjDlF6iSLNDwUsDA1GM0-r4nBviKSIpvZu79rr9K873gHTOiFxVDDOMymfxkHABsU9ZwB79urUGMAKxcZQ", "e": "AQAB"}, {"kty": "EC", "crv": "P-256", "kid": "ec-1", "x": "asV-vtzHsUNr69w_C8Za5JLBrUuWOU2dMeHKX4JoTlA", "y": "p8g3QJkix7B3DrwJIPLcz8wFiqZ93PWFk5wTk-s5mrU"}]}"#;

const RS_GOOD: &str = "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCIsImtpZCI6InJzYS0xIn0.eyJpc3MiOiJodHRwczovL2lzc3Vlci50ZXN0IiwiYXVkIjoiYXBpIiwiZXhwIjo0MTAyNDQ0ODAwLCJzdWIiOiJhbm4iLCJyb2xlIjoiYWRtaW4ifQ.Xum7J3gvABnJMtmk3O3jHaIItQ_DFO_8wKMZTYjwfFYlu2ZUkChvXbyITzDfyhi3J3YCC1SVLHme7zxcnTwsiSlsa-ATpuAz4Ud7bHweVOoAC5nlKNhKIH2_N70-gneFYBUa-8YW6rJdxdkfipvvde79qf_VuocQ47vRHT3ZUPzcIs-TdOevxaTy9PYobSfOZfmPsW5mw79CJ7WROw1INvR979xgahcpHorO6RkPIqCuHqA2w-KjLDG2646Sz8-zaaIbxwHc4pqYAFXn-YYHfbka0QCcKXuAROk1W0jx3ij3MkksyCXbsugpCIMMGukGXsRBm0eWlPl5RMeJnRZccA";
const ES_GOOD: &str = "eyJhbGciOiJFUzI1NiIsInR5cCI6IkpXVCIsImtpZCI6ImVjLTEifQ.eyJpc3MiOiJodHRwczovL2lzc3Vlci50ZXN0IiwiYXVkIjpbImFwaSJdLCJleHAiOjQxMDI0NDQ4MDAsInN1YiI6ImJvYiIsImdyb3VwcyI6WyJkZXYiXX0.79X5ZZBqwVzz4SpYr6dgNZQWb1eHQjopZJ6sstTYNm7YVpRsd8HufxlA8HpK7XdKJy-zydb5g_AaY-BVVLA0Pg";
const RS_EXPIRED: &str = "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCIsImtpZCI6InJzYS0xIn0.eyJpc3MiOiJodHRwczovL2lzc3Vlci50ZXN0IiwiYXVkIjoiYXBpIiwiZXhwIjoxMDAwMDAwMDAwLCJzdWIiOiJhbm4iLCJyb2xlIjoiYWRtaW4ifQ.Pu0aq1SzftSItaQaCmlGEBDOhz9cyX6W65WvpiWDIR8_VAta5yjzTd8yl8LoqNj_eAa2ZatAohMsxHq8jpuMc9CyzRf4gg1ZWr0rPAMfV7WJdhEzBLhtBUq-F-bpiXhttNThUdm4Vn2tCxsLS4eXpdjdu73ebRnim4C21Tf2TQq90kixPQbivhdDJKRNHun77ZdHZCkvA0ODhPXKw7BjGDVRpa7F5zqpQpOpXpFN9IH6QLSB0WUIRXIahmdgl_9WsUYQ3VNQ0K4opw3LBraxRqYxKfnmUvY-jC3tgMW3EaFVhV7lOehLHG9CiKbgm1Dl4HC9nmYvtL5_91le8l7KaA";
const ES_WRONG_AUD: &str = "eyJhbGciOiJFUzI1NiIsInR5cCI6IkpXVCIsImtpZCI6ImVjLTEifQ.eyJpc3MiOiJodHRwczovL2lzc3Vlci50ZXN0IiwiYXVkIjoid2ViIiwiZXhwIjo0MTAyNDQ0ODAwLCJzdWIiOiJib2IifQ.nsy7ecQO7zA5A-JOCfjTRD3e3kdqwGLLKHbaoNvvI0X2U9QWToHFQeweFScYy0sOCCmriJKWlpokvTQPu0DYpQ";
const TAMPERED: &str = "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCIsImtpZCI6InJzYS0xIn0.eyJpc3MiOiJodHRwczovL2lzc3Vlci50ZXN0IiwiYXVkIjoiYXBpIiwiZXhwIjo0MTAyNDQ0ODAwLCJzdWIiOiJldmUiLCJyb2xlIjoiYWRtaW4ifQ.Xum7J3gvABnJMtmk3O3jHaIItQ_DFO_8wKMZTYjwfFYlu2ZUkChvXbyITzDfyhi3J3YCC1SVLHme7zxcnTwsiSlsa-ATpuAz4Ud7bHweVOoAC5nlKNhKIH2_N70-gneFYBUa-8YW6rJdxdkfipvvde79qf_VuocQ47vRHT3ZUPzcIs-TdOevxaTy9PYobSfOZfmPsW5mw79CJ7WROw1INvR979xgahcpHorO6RkPIqCuHqA2w-KjLDG2646Sz8-zaaIbxwHc4pqYAFXn-YYHfbka0QCcKXuAROk1W0jx3ij3MkksyCXbsugpCIMMGukGXsRBm0eWlPl5RMeJnRZccA";

fn config() -> String {
    format!(
        r#"{{
  "jwt": {{ "jwks": {JWKS}, "issuer": "https://issuer.test", "audiences": ["api"] }},
  "api_keys": {{ "keys": {{ "k-123": "billing-job" }} }},
  "rules": [
    {{ "action": "deny", "paths": ["/admin/internal"] }},
    {{ "action": "allow", "paths": ["/health"] }},
    {{ "action": "allow", "paths": ["/admin/*"], "require": "jwt", "claims": {{ "role": "admin" }} }},
    {{ "action": "allow", "paths": ["/dev/*"], "require": "jwt", "claims": {{ "groups": "dev" }} }},
    {{ "action": "allow", "paths": ["/batch/*"], "methods": ["POST"], "require": "api_key" }},
    {{ "action": "allow", "paths": ["/api/*"], "require": "any" }},
    {{ "action": "allow", "paths": ["/local/*"], "sources": ["127.0.0.0/8"] }}
  ]
}}"#
    )
}

async fn harness() -> Harness {
    Harness::builder()
        .filter("authz", &module("authz"), &config())
        .start()
        .await
        .unwrap_or_else(|error| panic!("{error}"))
}

async fn get(harness: &Harness, path: &str, token: Option<&str>) -> Reply {
    let bearer = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = bearer
        .iter()
        .map(|b| ("authorization", b.as_str()))
        .collect();
    harness.get(path, &headers).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_checked_and_their_claims_used_in_rules() {
    let harness = harness().await;
    let admin = get(&harness, "/admin/users", Some(RS_GOOD)).await;
    assert_eq!(admin.status, 200, "{}", admin.body);
    let seen = harness.upstream().requests();
    assert_eq!(seen.last().unwrap().headers["x-authz-principal"], "ann");

    // bob's ES256 token is valid, but he is no admin: 403; his groups let him into /dev.
    let refused = get(&harness, "/admin/users", Some(ES_GOOD)).await;
    assert_eq!(refused.status, 403);
    assert_eq!(
        refused.body,
        "forbidden: the token's \"role\" claim does not allow this request\n"
    );
    assert_eq!(get(&harness, "/dev/x", Some(ES_GOOD)).await.status, 200);

    for (token, reason) in [
        (None, "a bearer token is required"),
        (Some(RS_EXPIRED), "the token has expired"),
        (Some(ES_WRONG_AUD), "the token is for another audience"),
        (
            Some(TAMPERED),
            "the token signature does not verify with any configured key",
        ),
        (Some("not.a.token"), "the token is not base64url"),
    ] {
        let reply = get(&harness, "/admin/users", token).await;
        assert_eq!(reply.status, 401, "{reason}");
        assert_eq!(reply.body, format!("unauthorized: {reason}\n"));
        assert!(
            reply
                .header("www-authenticate")
                .unwrap()
                .starts_with("Bearer realm=\"sluice\"")
        );
    }
    assert_eq!(
        harness.upstream().requests().len(),
        2,
        "refused requests never reach the upstream"
    );

    // The path is matched as the upstream would read it.
    for tricky in [
        "//admin/users",
        "/%61dmin/users",
        "/health/../admin/users",
        "/admin",
    ] {
        assert_eq!(get(&harness, tricky, None).await.status, 401, "{tricky}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_on_paths_methods_keys_and_sources() {
    let harness = harness().await;
    assert_eq!(get(&harness, "/health", None).await.status, 200);
    let denied = get(&harness, "/admin/internal", Some(RS_GOOD)).await;
    assert_eq!(denied.status, 403, "the first matching rule decides");
    assert_eq!(denied.body, "forbidden: rule 0 denies this request\n");

    let batch = |method: &str, key: Option<&str>| {
        let mut request = http::Request::builder()
            .method(method)
            .uri("/batch/run")
            .header("host", "h");
        if let Some(key) = key {
            request = request.header("x-api-key", key);
        }
        request.body(Default::default()).unwrap()
    };
    assert_eq!(harness.send(batch("POST", Some("k-123"))).await.status, 200);
    assert_eq!(
        harness.upstream().requests().last().unwrap().headers["x-authz-principal"],
        "billing-job"
    );
    assert_eq!(harness.send(batch("POST", Some("nope"))).await.status, 401);
    assert_eq!(
        harness.send(batch("GET", Some("k-123"))).await.status,
        403,
        "GET matches no rule: default deny"
    );

    // `any`: a key or a token.
    assert_eq!(
        harness
            .get("/api/x", &[("x-api-key", "k-123")])
            .await
            .status,
        200
    );
    assert_eq!(get(&harness, "/api/x", Some(ES_GOOD)).await.status, 200);
    assert_eq!(get(&harness, "/api/x", None).await.status, 401);

    // The tests' client is on 127.0.0.1.
    assert_eq!(get(&harness, "/local/x", None).await.status, 200);
    let nothing = get(&harness, "/elsewhere", None).await;
    assert_eq!(
        (nothing.status.as_u16(), nothing.body.as_str()),
        (403, "forbidden: no rule allows this request\n")
    );

    // A client cannot claim to be someone.
    harness
        .get("/health", &[("x-authz-principal", "root")])
        .await;
    assert!(
        harness
            .upstream()
            .requests()
            .last()
            .unwrap()
            .headers
            .get("x-authz-principal")
            .is_none()
    );
    assert_eq!(harness.filter_metric("authz_denied").await, Some(5.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_configuration_is_refused_before_it_serves() {
    let error = sluice_filter_tests::refusal(
        "authz",
        r#"{"rules": [{"action": "allow", "require": "jwt"}]}"#,
    )
    .await;
    assert!(
        error.contains("proxy_on_configure returned false"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_external_service_has_the_last_word() {
    use sluice_sdk::harness::Scripted;
    // The scripted upstream plays the authorization service too (cluster `upstream`).
    let config = r#"{
        "external": { "cluster": "upstream", "path_prefix": "/check", "timeout": "100ms" },
        "rules": [{ "action": "allow" }]
    }"#;
    let harness = Harness::builder()
        .filter("authz", &module("authz"), config)
        .start()
        .await
        .unwrap_or_else(|error| panic!("{error}"));

    harness
        .upstream()
        .script([Scripted::status(403).body("no way\n")]);
    let refused = harness.get("/x", &[("authorization", "Bearer t")]).await;
    assert_eq!(
        (refused.status.as_u16(), refused.body.as_str()),
        (403, "no way\n")
    );
    let check = harness.upstream().requests().remove(0);
    assert_eq!(check.path, "/check/x");
    assert_eq!(check.headers["authorization"], "Bearer t");

    harness.upstream().script([Scripted::status(200)]);
    assert_eq!(harness.get("/y", &[]).await.status, 200);
    let paths: Vec<String> = harness
        .upstream()
        .requests()
        .iter()
        .map(|r| r.path.clone())
        .collect();
    assert_eq!(paths, ["/check/x", "/check/y", "/y"]);

    // No answer in time: fail closed.
    harness
        .upstream()
        .script([Scripted::status(200).delay(std::time::Duration::from_millis(500))]);
    let unchecked = harness.get("/z", &[]).await;
    assert_eq!(unchecked.status, 403);
    assert_eq!(
        unchecked.body,
        "forbidden: the authorization service could not be asked\n"
    );
    assert_eq!(
        harness.upstream().requests().len(),
        4,
        "/z never went upstream"
    );
}
