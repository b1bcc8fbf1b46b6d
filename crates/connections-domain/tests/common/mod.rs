//! Generators shared by the property tests.

use connections_domain::*;
use proptest::prelude::*;

pub fn conn(n: u8) -> ConnectionId {
    ConnectionId::from_uuid(uuid::Uuid::from_u128(u128::from(n) + 1))
}

pub fn arb_request() -> impl Strategy<Value = Request> {
    let actor = prop_oneof![4 => Just("alice"), 1 => Just("bob")];
    let agent = prop_oneof![Just("a1"), Just("a2"), Just("a3")];
    let command = prop_oneof![
        (0u8..4, proptest::option::of(agent.clone())).prop_map(|(n, a)| Command::CreateConnection {
            connection_id: conn(n),
            service: ServiceName::parse("svc").expect("valid"),
            name: ConnectionName::parse("n").expect("valid"),
            credential_kind: CredentialKind::ApiKey,
            agent_id: a.map(|a| AgentId::parse(a).expect("valid")),
            skill: None,
        }),
        (0u8..4, agent.clone()).prop_map(|(n, a)| Command::AssignToAgent {
            connection_id: conn(n),
            agent_id: AgentId::parse(a).expect("valid")
        }),
        (0u8..4, agent.clone()).prop_map(|(n, a)| Command::UnassignFromAgent {
            connection_id: conn(n),
            agent_id: AgentId::parse(a).expect("valid")
        }),
        (0u8..4).prop_map(|n| Command::RevokeConnection { connection_id: conn(n) }),
        (0u8..4).prop_map(|n| Command::SetDefault { connection_id: conn(n) }),
        Just(Command::ClearDefault),
        (0u8..4)
            .prop_map(|n| Command::RotateCredential { connection_id: conn(n), credential_kind: CredentialKind::Basic }),
        (0u8..4, 1u32..3).prop_map(|(n, v)| Command::ReportRejected {
            connection_id: conn(n),
            agent_id: Some(AgentId::parse("a1").expect("valid")),
            credential_version: v,
            status: None,
            detail: None,
        }),
        (0u8..4).prop_map(|n| Command::ReconnectThroughProvider { connection_id: conn(n), scopes: vec![] }),
        (0u8..4).prop_map(|n| Command::RecordUpstreamRevocation {
            connection_id: conn(n),
            outcome: UpstreamOutcome::Revoked,
            attempts: 1,
        }),
        agent.clone().prop_map(|a| Command::ResolveForAgent { agent_id: AgentId::parse(a).expect("valid") }),
        (0u8..4, 0u8..6).prop_map(|(n, m)| Command::ReplaceConnection {
            connection_id: conn(n),
            new_connection_id: conn(m),
            name: None,
            credential_kind: CredentialKind::ApiKey,
        }),
    ];
    (actor, command).prop_map(|(actor, command)| Request { actor: OwnerId::parse(actor).expect("valid"), command })
}
