//! `schemas/openapi.json` and the router agree: every documented operation
//! is mounted, and every mounted route is documented.

use std::collections::BTreeSet;

use axum::http::{Method, StatusCode};
use connections_api::ROUTES;

use crate::TestApp;

fn documented() -> BTreeSet<(String, String)> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../schemas/openapi.json");
    let document: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("read openapi.json")).expect("openapi.json is JSON");
    assert_eq!(document["openapi"], "3.1.0");
    let mut operations = BTreeSet::new();
    for (path, item) in document["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("path item").keys() {
            operations.insert((method.to_uppercase(), path.clone()));
        }
    }
    operations
}

#[test]
fn the_route_table_matches_the_openapi_document() {
    let mounted: BTreeSet<(String, String)> = ROUTES.iter().map(|(m, p)| (m.to_string(), p.to_string())).collect();
    assert_eq!(mounted, documented());
}

#[tokio::test]
async fn every_documented_operation_is_mounted_with_that_method() {
    let app = TestApp::new().await;
    for (method, path) in documented() {
        let concrete = path
            .replace("{id}", &uuid::Uuid::now_v7().to_string())
            .replace("{agent_id}", "agent-1")
            .replace("{service}", "github");
        let method = Method::from_bytes(method.as_bytes()).expect("method");
        let answer = app.send(method.clone(), &concrete, None, None).await;
        assert_ne!(answer.body["type"], "urn:connections:problem:no-such-route", "{method} {path} is not mounted");
        assert_ne!(answer.status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path} is not mounted with that method");
    }
    // A method the document does not list on a mounted path is refused.
    let answer = app.send(Method::PATCH, &format!("/v1/connections/{}", uuid::Uuid::now_v7()), None, None).await;
    assert_eq!(answer.status, StatusCode::METHOD_NOT_ALLOWED);
}
