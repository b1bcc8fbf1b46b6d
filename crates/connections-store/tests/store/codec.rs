//! The stored form of events: every event the domain emits round-trips and
//! validates against its JSON Schema in `schemas/events/`.

use std::path::PathBuf;

use connections_domain::*;
use connections_store::codec::{decode, encode, EVENT_TYPES, WRITTEN_BEFORE};

fn schemas_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../schemas/events")
}

fn validator(event_type: &str, schema_version: i32) -> jsonschema::Validator {
    let path = schemas_dir().join(format!("{event_type}.v{schema_version}.json"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let schema: serde_json::Value = serde_json::from_str(&text).expect("schema is JSON");
    assert_eq!(schema["x-event-type"], event_type, "{} names another type", path.display());
    assert_eq!(schema["x-schema-version"], schema_version, "{} has another version", path.display());
    jsonschema::validator_for(&schema).expect("schema compiles")
}

/// Every event type, produced by the real decide function.
fn events_of_every_type() -> Vec<Event> {
    let alice = OwnerId::parse("alice").expect("valid");
    let c1 = ConnectionId::from_uuid(uuid::Uuid::now_v7());
    let c2 = ConnectionId::from_uuid(uuid::Uuid::now_v7());
    let c3 = ConnectionId::from_uuid(uuid::Uuid::now_v7());
    let create = |id, agent: Option<&str>, skill: Option<&str>| Command::CreateConnection {
        connection_id: id,
        service: ServiceName::parse("google-calendar").expect("valid"),
        name: ConnectionName::parse("Work calendar ✓").expect("valid"),
        credential_kind: CredentialKind::Oauth2,
        agent_id: agent.map(|a| AgentId::parse(a).expect("valid")),
        skill: skill.map(|s| SkillName::parse(s).expect("valid")),
    };
    let commands = vec![
        create(c1, Some("agent-1"), Some("calendar-connector")),
        create(c2, None, None),
        Command::AssignToAgent { connection_id: c2, agent_id: AgentId::parse("agent-1").expect("valid") },
        Command::AssignToAgent { connection_id: c1, agent_id: AgentId::parse("agent_2").expect("valid") },
        Command::UnassignFromAgent { connection_id: c1, agent_id: AgentId::parse("agent_2").expect("valid") },
        Command::RotateCredential { connection_id: c1, credential_kind: CredentialKind::ApiKey },
        Command::SetDefault { connection_id: c1 },
        Command::SetDefault { connection_id: c2 },
        Command::ClearDefault,
        Command::SetDefault { connection_id: c2 },
        Command::ResolveForAgent { agent_id: AgentId::parse("agent-3").expect("valid") },
        Command::RevokeConnection { connection_id: c2 },
        Command::ConnectThroughProvider {
            connection_id: c3,
            service: ServiceName::parse("google-calendar").expect("valid"),
            name: ConnectionName::parse("Calendar").expect("valid"),
            agent_id: None,
            skill: None,
            scopes: vec![Scope::parse("https://www.googleapis.com/auth/calendar.readonly").expect("valid")],
        },
        Command::RefreshCredential { connection_id: c3, from_version: 1 },
        Command::ReportRejected {
            connection_id: c3,
            agent_id: None,
            credential_version: 2,
            status: None,
            detail: Some(
                ProblemDetail::parse("the provider refused to refresh the tokens (invalid_grant)").expect("valid"),
            ),
        },
        Command::ReconnectThroughProvider {
            connection_id: c3,
            scopes: vec![Scope::parse("calendar.read").expect("valid")],
        },
        Command::RewrapDataKey {
            connection_id: c3,
            from_key_id: MasterKeyId::parse("k1").expect("valid"),
            to_key_id: MasterKeyId::parse("k2").expect("valid"),
        },
        Command::RevokeConnection { connection_id: c3 },
        Command::RecordUpstreamRevocation { connection_id: c3, outcome: UpstreamOutcome::GaveUp, attempts: 10 },
        Command::ReportRejected {
            connection_id: c1,
            agent_id: Some(AgentId::parse("agent-1").expect("valid")),
            credential_version: 2,
            status: Some(401),
            detail: Some(ProblemDetail::parse("invalid_token ✓").expect("valid")),
        },
        Command::SetDefault { connection_id: c1 },
        Command::ReplaceConnection {
            connection_id: c1,
            new_connection_id: ConnectionId::from_uuid(uuid::Uuid::now_v7()),
            name: None,
            credential_kind: CredentialKind::Basic,
        },
    ];
    let mut state = OwnerService::default();
    let mut all = Vec::new();
    for command in commands {
        let events = decide(&state, &Request { actor: alice.clone(), command }).expect("scenario is valid");
        for event in &events {
            state.apply(event);
        }
        all.extend(events);
    }
    all
}

#[test]
fn every_emitted_event_round_trips_and_validates_against_its_schema() {
    let events = events_of_every_type();
    let mut seen_types = std::collections::BTreeSet::new();
    for event in &events {
        let (event_type, schema_version, data) = encode(event);
        seen_types.insert((event_type, schema_version));
        let validator = validator(event_type, schema_version);
        let errors: Vec<String> = validator.iter_errors(&data).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{event_type} does not match its schema: {errors:?}\n{data}");
        assert_eq!(&decode(event_type, schema_version, &data).expect("decodes"), event);
    }
    let all_types: std::collections::BTreeSet<_> = EVENT_TYPES.iter().copied().collect();
    assert_eq!(seen_types, all_types, "the scenario must produce every event type and version");
}

#[test]
fn there_is_exactly_one_schema_file_per_event_type_and_version() {
    let mut files: Vec<String> = std::fs::read_dir(schemas_dir())
        .expect("schemas/events exists")
        .map(|entry| entry.expect("dir entry").file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".json"))
        .collect();
    files.sort();
    let mut expected: Vec<String> =
        EVENT_TYPES.iter().chain(WRITTEN_BEFORE).map(|(t, v)| format!("{t}.v{v}.json")).collect();
    expected.sort();
    assert_eq!(files, expected);
}

#[test]
fn stored_data_that_breaks_the_contract_is_corrupt_not_a_panic() {
    let bad = serde_json::json!({"connection_id": "not-a-uuid", "affected_agents": []});
    assert!(decode("connection_revoked", 1, &bad).is_err());
    assert!(decode("connection_revoked", 2, &serde_json::json!({})).is_err());
    assert!(decode(
        "connection_revoked",
        4,
        &serde_json::json!({"connection_id": uuid::Uuid::nil(), "affected_agents": []})
    )
    .is_err());
    let v1_shaped = serde_json::json!({"connection_id": uuid::Uuid::nil(), "affected_agents": []});
    assert!(decode("connection_revoked", 2, &v1_shaped).is_err(), "v2 requires the link");
    assert!(decode("agent_assigned", 2, &serde_json::json!({})).is_err());
    assert!(decode("no_such_event", 1, &serde_json::json!({})).is_err());
}

#[test]
fn the_nats_envelope_schema_names_every_event_type() {
    let path = schemas_dir().join("../nats/envelope.v1.json");
    let envelope: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("read envelope.v1.json")).expect("JSON");
    let listed: std::collections::BTreeSet<&str> = envelope["properties"]["event_type"]["enum"]
        .as_array()
        .expect("an enum")
        .iter()
        .map(|t| t.as_str().expect("a name"))
        .collect();
    let emitted: std::collections::BTreeSet<&str> = EVENT_TYPES.iter().map(|(t, _)| *t).collect();
    assert_eq!(listed, emitted);
}

#[test]
fn a_revoke_written_before_v3_still_validates_and_decodes_as_the_same_event() {
    let connection_id = ConnectionId::from_uuid(uuid::Uuid::now_v7());
    let affected_agents = vec![AgentId::parse("agent-1").expect("valid")];
    let v1 = serde_json::json!({"connection_id": connection_id, "affected_agents": ["agent-1"]});
    let errors: Vec<String> = validator("connection_revoked", 1).iter_errors(&v1).map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "{errors:?}");
    let today = Event::ConnectionRevoked { connection_id, affected_agents, replaced_by: None };
    assert_eq!(decode("connection_revoked", 1, &v1).expect("decodes"), today);
    let (event_type, schema_version, data) = encode(&today);
    assert_eq!((event_type, schema_version), ("connection_revoked", 3));
    assert_eq!(data, v1, "v3 has v1's fields");
}
