//! Property tests: every invariant holds after any sequence of commands,
//! whoever issues them.

use connections_domain::*;
use proptest::prelude::*;

fn conn(n: u8) -> ConnectionId {
    ConnectionId::from_uuid(uuid::Uuid::from_u128(u128::from(n) + 1))
}

fn arb_request() -> impl Strategy<Value = Request> {
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
        (0u8..4, agent).prop_map(|(n, a)| Command::UnassignFromAgent {
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
        (0u8..4, 0u8..6).prop_map(|(n, m)| Command::ReplaceConnection {
            connection_id: conn(n),
            new_connection_id: conn(m),
            name: None,
            credential_kind: CredentialKind::ApiKey,
        }),
    ];
    (actor, command).prop_map(|(actor, command)| Request { actor: OwnerId::parse(actor).expect("valid"), command })
}

fn is_active(state: &OwnerService, id: ConnectionId) -> bool {
    state.connections.get(&id).is_some_and(|c| c.status == ConnectionStatus::Active)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn invariants_hold_after_any_command_sequence(requests in proptest::collection::vec(arb_request(), 1..60)) {
        let mut state = OwnerService::default();
        for request in requests {
            let before = state.clone();
            let result = decide(&state, &request);
            if let Ok(events) = &result {
                for event in events {
                    state.apply(event);
                }
            }
            // Only the owner acts: a stranger's command never changes anything.
            if state.owner.is_some() && before.owner.as_ref() != Some(&request.actor) && before.owner.is_some() {
                prop_assert_eq!(&state, &before, "a stranger changed the state");
            }
            // Every binding points at an active connection.
            for (agent, binding) in &state.bindings {
                prop_assert!(is_active(&state, binding.connection_id), "{} bound to an inactive connection", agent);
            }
            // Only an active connection whose current version was reported needs attention.
            for connection in state.connections.values() {
                if connection.needs_attention {
                    prop_assert!(is_active(&state, connection.connection_id));
                }
            }
            // The default, if any, is an active connection.
            if let Some(default) = state.default {
                prop_assert!(is_active(&state, default), "default is not active");
            }
            // A revoke names exactly the agents that were bound before it.
            if let (Command::RevokeConnection { connection_id }, Ok(events)) = (&request.command, &result) {
                if let Some(Event::ConnectionRevoked { affected_agents, .. }) = events.last() {
                    prop_assert_eq!(affected_agents, &before.agents_of(*connection_id));
                }
            }
            // Resolution never changes anything but the asking agent's binding,
            // and only ever to the owner's default.
            if let (Command::ResolveForAgent { agent_id }, Ok(events)) = (&request.command, &result) {
                for event in events {
                    prop_assert!(
                        matches!(event, Event::AgentAssigned { agent_id: a, connection_id, source: BindingSource::Default }
                            if a == agent_id && Some(*connection_id) == before.default),
                        "resolution produced {:?}", event
                    );
                }
            }
            // A replacement moves exactly the old connection's agents and its
            // default to the new connection, and no other binding changes.
            if let (Command::ReplaceConnection { connection_id, new_connection_id, .. }, Ok(_)) = (&request.command, &result) {
                prop_assert_eq!(state.agents_of(*new_connection_id), before.agents_of(*connection_id));
                prop_assert!(!is_active(&state, *connection_id));
                if before.default == Some(*connection_id) {
                    prop_assert_eq!(state.default, Some(*new_connection_id));
                } else {
                    prop_assert_eq!(state.default, before.default);
                }
                for (agent, binding) in &before.bindings {
                    if binding.connection_id != *connection_id {
                        prop_assert_eq!(state.bindings.get(agent), Some(binding));
                    }
                }
            }
            // Revoking twice appends nothing.
            if let Command::RevokeConnection { connection_id } = &request.command {
                let again = decide(&state, &request);
                if before.is_owned_by(&request.actor) && state.connections.contains_key(connection_id) {
                    prop_assert_eq!(again, Ok(vec![]));
                }
            }
        }
    }
}
