//! Property tests of the focus: a command decided on the part of the state
//! its focus names answers what it answers on the whole state, and its
//! changes, written back entry by entry, give the whole state's next state.

use connections_domain::*;
use proptest::prelude::*;

mod common;
use common::arb_request;

fn owner_and_service(state: &OwnerService) -> (OwnerId, ServiceName) {
    (
        state.owner.clone().unwrap_or_else(|| OwnerId::parse("alice").expect("valid")),
        state.service.clone().unwrap_or_else(|| ServiceName::parse("svc").expect("valid")),
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn a_restricted_state_decides_and_changes_as_the_whole_state(
        history in proptest::collection::vec(arb_request(), 0..60),
        next in arb_request(),
    ) {
        let mut whole = OwnerService::default();
        for request in &history {
            if let Ok(events) = decide(&whole, request) {
                events.iter().for_each(|event| whole.apply(event));
            }
        }
        let restricted = whole.restricted_to(&next.command.focus());
        let decided = decide(&restricted, &next);
        prop_assert_eq!(&decided, &decide(&whole, &next), "the restricted state decided otherwise");
        if let Ok(events) = decided {
            let mut after = restricted.clone();
            let mut whole_after = whole.clone();
            for event in &events {
                after.apply(event);
                whole_after.apply(event);
            }
            let (owner, service) = owner_and_service(&whole_after);
            let mut written_back = whole.clone();
            written_back.apply_changes(&owner, &service, &StateChanges::between(&restricted, &after));
            prop_assert_eq!(written_back, whole_after, "writing the changes back missed something");
        }
    }
}

/// A connection used by more agents than an answer lists: the restricted
/// state carries the first ones in id order and knows there are more, also
/// after a command that removes or adds one of them.
#[test]
fn answers_list_the_first_agents_of_a_busy_connection() {
    let alice = OwnerId::parse("alice").expect("valid");
    let connection_id = ConnectionId::from_uuid(uuid::Uuid::from_u128(1));
    let agent = |n: usize| AgentId::parse(format!("agent-{n:04}")).expect("valid");
    let mut whole = OwnerService::default();
    let create = Command::CreateConnection {
        connection_id,
        service: ServiceName::parse("svc").expect("valid"),
        name: ConnectionName::parse("n").expect("valid"),
        credential_kind: CredentialKind::ApiKey,
        agent_id: None,
        skill: None,
    };
    let run = |whole: &mut OwnerService, command: Command| {
        let request = Request { actor: alice.clone(), command };
        let restricted = whole.restricted_to(&request.command.focus());
        let events = decide(&restricted, &request).expect("accepted");
        let mut after = restricted.clone();
        events.iter().for_each(|event| after.apply(event));
        events.iter().for_each(|event| whole.apply(event));
        after
    };
    run(&mut whole, create);
    for n in 0..250 {
        run(&mut whole, Command::AssignToAgent { connection_id, agent_id: agent(n) });
    }
    let expected = |whole: &OwnerService| -> Vec<AgentId> {
        whole.agents_of(connection_id).into_iter().take(AGENTS_LISTED).collect()
    };
    for command in [
        Command::UnassignFromAgent { connection_id, agent_id: agent(3) },
        Command::AssignToAgent { connection_id, agent_id: agent(3) },
        Command::AssignToAgent { connection_id, agent_id: agent(9999) },
        Command::SetDefault { connection_id },
    ] {
        let after = run(&mut whole, command.clone());
        let (listed, more) = after.agents_listed(connection_id);
        let listed: Vec<AgentId> = listed.into_iter().map(|(agent, _)| agent.clone()).collect();
        assert_eq!(listed, expected(&whole), "after {command:?}");
        assert!(more, "after {command:?}: 251 agents are more than the answer lists");
        assert!(after.bindings.len() <= AGENT_SAMPLE + 1, "after {command:?}: the restricted state stays small");
    }
}
