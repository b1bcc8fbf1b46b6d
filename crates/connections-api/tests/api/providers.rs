//! Configured OAuth 2.0 providers: the documented file format, and
//! `GET /v1/providers`.

use axum::http::{Method, StatusCode};
use connections_api::providers::Providers;
use serde_json::{json, Value};

use crate::TestApp;

fn schema() -> jsonschema::Validator {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../schemas/providers.v1.json");
    let schema: Value = serde_json::from_str(&std::fs::read_to_string(path).expect("read")).expect("JSON");
    jsonschema::validator_for(&schema).expect("schema compiles")
}

fn example() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../schemas/providers.example.json"))
        .expect("read the example")
}

#[test]
fn the_documented_example_validates_and_parses_and_the_schema_and_parser_agree_on_refusals() {
    let validator = schema();
    let text = example();
    let value: Value = serde_json::from_str(&text).expect("JSON");
    assert!(validator.is_valid(&value));
    let dir = std::env::temp_dir().join(format!("providers-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(&dir).expect("dir");
    let secret_file = dir.join("outlook");
    std::fs::write(&secret_file, "file-secret\n").expect("write");
    let text = text.replace("/run/secrets/outlook-client-secret", secret_file.to_str().expect("utf-8"));
    let env = |name: &str| (name == "GOOGLE_CLIENT_SECRET").then(|| "env-secret".to_owned());
    let providers = Providers::parse(&text, env).expect("the example parses");
    let services: Vec<String> = providers.iter().map(|p| p.service.to_string()).collect();
    assert_eq!(services, ["google-calendar", "outlook"]);
    assert_eq!(providers.iter().nth(1).expect("outlook").client_secret.expose(), "file-secret");
    let _ = std::fs::remove_dir_all(&dir);
    // An inline secret, two secret sources, a non-http endpoint: both refuse.
    for broken in [
        text.replacen("\"client_secret_env\": \"GOOGLE_CLIENT_SECRET\"", "\"client_secret\": \"inline\"", 1),
        text.replacen(
            "\"client_secret_env\": \"GOOGLE_CLIENT_SECRET\"",
            "\"client_secret_env\": \"GOOGLE_CLIENT_SECRET\", \"client_secret_file\": \"/x\"",
            1,
        ),
        text.replacen("https://oauth2.googleapis.com/token", "file:///etc/passwd", 1),
    ] {
        let value: Value = serde_json::from_str(&broken).expect("JSON");
        assert!(!validator.is_valid(&value), "the schema accepts {broken}");
        assert!(Providers::parse(&broken, env).is_err(), "the parser accepts {broken}");
    }
}

#[tokio::test]
async fn providers_are_listed_without_their_clients() {
    let mut app = TestApp::new().await;
    let none = app.send(Method::GET, "/v1/providers", Some("alice"), None).await;
    assert_eq!((none.status, none.body.clone()), (StatusCode::OK, json!({"providers": []})));
    let text = example().replace("/run/secrets/outlook-client-secret", "/dev/null").replacen(
        "\"client_secret_file\": \"/dev/null\"",
        "\"client_secret_env\": \"GOOGLE_CLIENT_SECRET\"",
        1,
    );
    let providers = Providers::parse(&text, |_| Some("the-client-secret".to_owned())).expect("parses");
    app.use_settings(connections_api::Settings { providers, ..Default::default() });
    let listed = app.send(Method::GET, "/v1/providers", Some("alice"), None).await;
    assert_eq!(listed.status, StatusCode::OK);
    assert_eq!(
        listed.body["providers"],
        json!([
            {"service": "google-calendar", "scopes": ["https://www.googleapis.com/auth/calendar.readonly"], "pkce": true},
            {"service": "outlook", "scopes": ["offline_access", "Calendars.Read"], "pkce": true},
        ])
    );
    let text = listed.body.to_string();
    assert!(!text.contains("the-client-secret") && !text.contains("client_id") && !text.contains("googleusercontent"));
    let anonymous = app.send(Method::GET, "/v1/providers", None, None).await;
    anonymous.assert_problem(StatusCode::UNAUTHORIZED, "unauthorized");
}
