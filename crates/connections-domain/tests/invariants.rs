//! Property tests: every invariant holds after any sequence of commands,
//! whoever issues them.

use connections_domain::*;
use proptest::prelude::*;

mod common;
use common::arb_request;

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
