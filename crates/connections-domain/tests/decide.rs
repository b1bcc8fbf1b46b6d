//! Given/when/then tests of the domain's invariants.

use connections_domain::*;

fn owner(s: &str) -> OwnerId {
    OwnerId::parse(s).expect("valid owner id")
}
fn agent(s: &str) -> AgentId {
    AgentId::parse(s).expect("valid agent id")
}
fn conn(n: u128) -> ConnectionId {
    ConnectionId::from_uuid(uuid::Uuid::from_u128(n))
}
fn create(n: u128, agent_id: Option<&str>) -> Command {
    Command::CreateConnection {
        connection_id: conn(n),
        service: ServiceName::parse("google-calendar").expect("valid service"),
        name: ConnectionName::parse(format!("conn {n}")).expect("valid name"),
        credential_kind: CredentialKind::ApiKey,
        agent_id: agent_id.map(agent),
        skill: None,
    }
}

/// Given the commands `history` (all by alice, all accepted), when `actor`
/// issues `command`, then the result is returned with the resulting state.
fn given_when(history: Vec<Command>, actor: &str, command: Command) -> (Result<Vec<Event>, DomainError>, OwnerService) {
    let mut state = OwnerService::default();
    for past in history {
        let events = decide(&state, &Request { actor: owner("alice"), command: past }).expect("history is valid");
        for event in &events {
            state.apply(event);
        }
    }
    let result = decide(&state, &Request { actor: owner(actor), command });
    if let Ok(events) = &result {
        for event in events {
            state.apply(event);
        }
    }
    (result, state)
}

#[test]
fn creating_with_an_agent_binds_it_and_records_the_skill_context() {
    let (result, state) = given_when(vec![], "alice", create(1, Some("a1")));
    let events = result.expect("create accepted");
    assert!(matches!(events[0], Event::ConnectionCreated { .. }));
    assert_eq!(
        events[1],
        Event::AgentAssigned { connection_id: conn(1), agent_id: agent("a1"), source: BindingSource::Created }
    );
    assert_eq!(state.agents_of(conn(1)), vec![agent("a1")]);
}

#[test]
fn only_the_owner_can_act_everyone_else_gets_not_found() {
    let history = vec![create(1, Some("a1"))];
    for command in [
        Command::AssignToAgent { connection_id: conn(1), agent_id: agent("b1") },
        Command::UnassignFromAgent { connection_id: conn(1), agent_id: agent("a1") },
        Command::RevokeConnection { connection_id: conn(1) },
        Command::SetDefault { connection_id: conn(1) },
        Command::RotateCredential { connection_id: conn(1), credential_kind: CredentialKind::ApiKey },
        create(2, None),
    ] {
        let (result, _) = given_when(history.clone(), "bob", command.clone());
        assert_eq!(result, Err(DomainError::NotFound), "bob must not see alice's connection: {command:?}");
    }
    let (result, _) =
        given_when(vec![create(1, None), Command::SetDefault { connection_id: conn(1) }], "bob", Command::ClearDefault);
    assert_eq!(result, Ok(vec![]), "bob's ClearDefault must not touch alice's default");
}

#[test]
fn assigning_replaces_the_agents_previous_binding_with_an_explicit_end() {
    let (result, state) = given_when(
        vec![create(1, Some("a1")), create(2, None)],
        "alice",
        Command::AssignToAgent { connection_id: conn(2), agent_id: agent("a1") },
    );
    assert_eq!(
        result.expect("assign accepted"),
        vec![
            Event::AgentUnassigned { connection_id: conn(1), agent_id: agent("a1"), reason: UnbindReason::Replaced },
            Event::AgentAssigned { connection_id: conn(2), agent_id: agent("a1"), source: BindingSource::Assigned },
        ]
    );
    assert_eq!(state.agents_of(conn(1)), Vec::<AgentId>::new());
    assert_eq!(state.agents_of(conn(2)), vec![agent("a1")]);
}

#[test]
fn setting_a_default_replaces_the_previous_one() {
    let (result, state) = given_when(
        vec![create(1, None), create(2, None), Command::SetDefault { connection_id: conn(1) }],
        "alice",
        Command::SetDefault { connection_id: conn(2) },
    );
    assert_eq!(result, Ok(vec![Event::DefaultSet { connection_id: conn(2), previous: Some(conn(1)) }]));
    assert_eq!(state.default, Some(conn(2)));
}

#[test]
fn revoking_the_default_clears_it_and_ends_every_binding_in_one_decision() {
    let (result, state) = given_when(
        vec![
            create(1, Some("a1")),
            Command::AssignToAgent { connection_id: conn(1), agent_id: agent("a2") },
            Command::SetDefault { connection_id: conn(1) },
        ],
        "alice",
        Command::RevokeConnection { connection_id: conn(1) },
    );
    let events = result.expect("revoke accepted");
    assert_eq!(events[0], Event::DefaultCleared { connection_id: conn(1), reason: DefaultClearReason::Revoked });
    assert_eq!(
        events.last(),
        Some(&Event::ConnectionRevoked {
            connection_id: conn(1),
            affected_agents: vec![agent("a1"), agent("a2")],
            replaced_by: None
        })
    );
    assert_eq!(state.default, None);
    assert!(state.bindings.is_empty());
}

#[test]
fn revoking_twice_appends_nothing_and_answers_the_same_agents() {
    let history = vec![create(1, Some("a1")), Command::RevokeConnection { connection_id: conn(1) }];
    let (result, state) = given_when(history, "alice", Command::RevokeConnection { connection_id: conn(1) });
    assert_eq!(result, Ok(vec![]));
    assert_eq!(
        state.connections[&conn(1)].status,
        ConnectionStatus::Revoked { affected_agents: vec![agent("a1")], replaced_by: None }
    );
}

#[test]
fn a_revoked_connection_cannot_be_assigned_made_default_or_rotated() {
    let history = vec![create(1, None), Command::RevokeConnection { connection_id: conn(1) }];
    for command in [
        Command::AssignToAgent { connection_id: conn(1), agent_id: agent("a1") },
        Command::SetDefault { connection_id: conn(1) },
        Command::RotateCredential { connection_id: conn(1), credential_kind: CredentialKind::Basic },
    ] {
        let (result, _) = given_when(history.clone(), "alice", command);
        assert_eq!(result, Err(DomainError::Revoked(conn(1))));
    }
}

#[test]
fn rotating_increments_the_credential_version() {
    let (result, state) = given_when(
        vec![create(1, None)],
        "alice",
        Command::RotateCredential { connection_id: conn(1), credential_kind: CredentialKind::Oauth2 },
    );
    assert_eq!(
        result,
        Ok(vec![Event::CredentialRotated {
            connection_id: conn(1),
            credential_version: 2,
            credential_kind: CredentialKind::Oauth2
        }])
    );
    assert_eq!(state.connections[&conn(1)].credential_version, 2);
}

#[test]
fn creating_an_existing_connection_id_is_refused() {
    let (result, _) = given_when(vec![create(1, None)], "alice", create(1, None));
    assert_eq!(result, Err(DomainError::AlreadyExists(conn(1))));
}

#[test]
fn unassigning_an_agent_that_is_not_bound_changes_nothing() {
    let (result, _) = given_when(
        vec![create(1, None)],
        "alice",
        Command::UnassignFromAgent { connection_id: conn(1), agent_id: agent("a9") },
    );
    assert_eq!(result, Ok(vec![]));
}

#[test]
fn creating_without_an_agent_decides_the_same_whatever_the_stream_holds() {
    let command = create(9, None);
    assert!(!command.reads_state());
    let empty = decide(&OwnerService::default(), &Request { actor: owner("alice"), command: command.clone() });
    let (busy, _) = given_when(
        vec![create(1, Some("a1")), Command::SetDefault { connection_id: conn(1) }, create(2, None)],
        "alice",
        command,
    );
    assert_eq!(empty, busy, "a state-independent command must decide the same on any state of its stream");
    assert!(create(9, Some("a1")).reads_state(), "assigning needs the agent's current binding");
    assert!(Command::ClearDefault.reads_state());
}

#[test]
fn resolving_uses_the_binding_else_binds_the_default_else_asks_for_authorization() {
    let resolve = |agent_id: &str| Command::ResolveForAgent { agent_id: agent(agent_id) };
    let (bound, _) = given_when(vec![create(1, Some("a1"))], "alice", resolve("a1"));
    assert_eq!(bound, Ok(vec![]), "an agent with a binding keeps it");
    let (none, _) = given_when(vec![create(1, None)], "alice", resolve("a2"));
    assert_eq!(none, Err(DomainError::AuthorizationRequired));
    let (by_default, state) =
        given_when(vec![create(1, None), Command::SetDefault { connection_id: conn(1) }], "alice", resolve("a2"));
    assert_eq!(
        by_default,
        Ok(vec![Event::AgentAssigned {
            connection_id: conn(1),
            agent_id: agent("a2"),
            source: BindingSource::Default
        }])
    );
    assert_eq!(state.agents_of(conn(1)), vec![agent("a2")]);
    let (stranger, _) =
        given_when(vec![create(1, None), Command::SetDefault { connection_id: conn(1) }], "bob", resolve("a2"));
    assert_eq!(stranger, Err(DomainError::AuthorizationRequired), "another owner's default is never handed out");
}

fn replace(old: u128, new: u128) -> Command {
    Command::ReplaceConnection {
        connection_id: conn(old),
        new_connection_id: conn(new),
        name: None,
        credential_kind: CredentialKind::Basic,
    }
}

#[test]
fn replacing_moves_every_agent_and_the_default_then_revokes_the_old_one() {
    let (result, state) = given_when(
        vec![
            create(1, Some("a1")),
            Command::AssignToAgent { connection_id: conn(1), agent_id: agent("a2") },
            Command::SetDefault { connection_id: conn(1) },
            Command::ResolveForAgent { agent_id: agent("a3") },
            create(2, Some("a4")),
        ],
        "alice",
        replace(1, 9),
    );
    let events = result.expect("replace accepted");
    assert!(matches!(
        &events[0],
        Event::ConnectionCreated { connection_id, replaces: Some(old), agent_id: None, name, credential_kind: CredentialKind::Basic, .. }
            if *connection_id == conn(9) && *old == conn(1) && name.as_str() == "conn 1"
    ));
    assert_eq!(events[1], Event::DefaultSet { connection_id: conn(9), previous: Some(conn(1)) });
    assert_eq!(
        events.last(),
        Some(&Event::ConnectionRevoked {
            connection_id: conn(1),
            affected_agents: vec![agent("a1"), agent("a2"), agent("a3")],
            replaced_by: Some(conn(9)),
        })
    );
    assert_eq!(state.agents_of(conn(9)), vec![agent("a1"), agent("a2"), agent("a3")]);
    assert_eq!(state.agents_of(conn(2)), vec![agent("a4")], "other connections keep their agents");
    assert_eq!(state.default, Some(conn(9)));
    // Each agent keeps how it came to use the connection.
    assert_eq!(state.bindings[&agent("a1")].source, BindingSource::Created);
    assert_eq!(state.bindings[&agent("a2")].source, BindingSource::Assigned);
    assert_eq!(state.bindings[&agent("a3")].source, BindingSource::Default);
    assert_eq!(state.connections[&conn(9)].replaces, Some(conn(1)));
    assert!(matches!(
        state.connections[&conn(1)].status,
        ConnectionStatus::Revoked { replaced_by: Some(new), .. } if new == conn(9)
    ));
}

#[test]
fn replacing_keeps_a_new_name_and_leaves_another_default_alone() {
    let command = Command::ReplaceConnection {
        connection_id: conn(1),
        new_connection_id: conn(9),
        name: Some(ConnectionName::parse("fresh").expect("valid")),
        credential_kind: CredentialKind::ApiKey,
    };
    let (result, state) = given_when(
        vec![create(1, None), create(2, None), Command::SetDefault { connection_id: conn(2) }],
        "alice",
        command,
    );
    let events = result.expect("replace accepted");
    assert_eq!(events.len(), 2, "a connection without agents or default: create and revoke only");
    assert_eq!(state.connections[&conn(9)].name.as_str(), "fresh");
    assert_eq!(state.default, Some(conn(2)));
}

#[test]
fn replacing_a_revoked_foreign_or_unknown_connection_is_refused_like_revoking() {
    let history = vec![create(1, Some("a1")), create(2, None), Command::RevokeConnection { connection_id: conn(2) }];
    let (revoked, _) = given_when(history.clone(), "alice", replace(2, 9));
    assert_eq!(revoked, Err(DomainError::Revoked(conn(2))));
    let (foreign, state) = given_when(history.clone(), "bob", replace(1, 9));
    assert_eq!(foreign, Err(DomainError::NotFound));
    assert_eq!(state.agents_of(conn(1)), vec![agent("a1")]);
    let (unknown, _) = given_when(history.clone(), "alice", replace(7, 9));
    assert_eq!(unknown, Err(DomainError::NotFound));
    let (taken, _) = given_when(history, "alice", replace(1, 2));
    assert_eq!(taken, Err(DomainError::AlreadyExists(conn(2))));
}

fn report(n: u128, version: u32) -> Command {
    Command::ReportRejected {
        connection_id: conn(n),
        agent_id: Some(agent("a1")),
        credential_version: version,
        status: Some(401),
        detail: None,
    }
}

#[test]
fn a_rejection_is_recorded_once_per_version_and_cleared_by_rotation_or_revocation() {
    let (first, state) = given_when(vec![create(1, Some("a1"))], "alice", report(1, 1));
    assert!(matches!(first.as_deref(), Ok([Event::CredentialRejected { credential_version: 1, .. }])));
    assert!(state.connections[&conn(1)].needs_attention);
    let (again, _) = given_when(vec![create(1, Some("a1")), report(1, 1)], "alice", report(1, 1));
    assert_eq!(again, Ok(vec![]), "a repeat changes nothing");
    let rotate = Command::RotateCredential { connection_id: conn(1), credential_kind: CredentialKind::ApiKey };
    let (_, rotated) = given_when(vec![create(1, Some("a1")), report(1, 1)], "alice", rotate.clone());
    assert!(!rotated.connections[&conn(1)].needs_attention, "a rotation clears it");
    let (stale, state) = given_when(vec![create(1, Some("a1")), rotate.clone()], "alice", report(1, 1));
    assert_eq!(stale, Ok(vec![]), "a report about a version rotated away changes nothing");
    assert!(!state.connections[&conn(1)].needs_attention);
    let (current, _) = given_when(vec![create(1, Some("a1")), report(1, 1), rotate], "alice", report(1, 2));
    assert!(matches!(current.as_deref(), Ok([Event::CredentialRejected { credential_version: 2, .. }])));
    let (_, revoked) = given_when(
        vec![create(1, Some("a1")), report(1, 1)],
        "alice",
        Command::RevokeConnection { connection_id: conn(1) },
    );
    assert!(!revoked.connections[&conn(1)].needs_attention);
}

#[test]
fn a_rejection_of_a_foreign_or_revoked_connection_is_refused() {
    let history = vec![create(1, Some("a1")), create(2, None), Command::RevokeConnection { connection_id: conn(2) }];
    assert_eq!(given_when(history.clone(), "bob", report(1, 1)).0, Err(DomainError::NotFound));
    assert_eq!(given_when(history.clone(), "alice", report(9, 1)).0, Err(DomainError::NotFound));
    assert_eq!(given_when(history, "alice", report(2, 1)).0, Err(DomainError::Revoked(conn(2))));
}

#[test]
fn connecting_through_a_provider_records_the_granted_scopes_and_binds_the_agent() {
    let scopes = vec![Scope::parse("calendar.read").expect("valid"), Scope::parse("openid").expect("valid")];
    let command = Command::ConnectThroughProvider {
        connection_id: conn(1),
        service: ServiceName::parse("google-calendar").expect("valid"),
        name: ConnectionName::parse("Calendar").expect("valid"),
        agent_id: Some(agent("a1")),
        skill: None,
        scopes: scopes.clone(),
    };
    assert!(command.reads_state(), "binding an agent needs its current binding");
    let (result, state) = given_when(vec![], "alice", command);
    let events = result.expect("accepted");
    assert!(matches!(events[0], Event::ConnectionCreated { credential_kind: CredentialKind::Oauth2, .. }));
    assert_eq!(events[1], Event::OauthGranted { connection_id: conn(1), scopes });
    assert_eq!(state.agents_of(conn(1)), vec![agent("a1")]);
    assert!(Scope::parse("bad scope").is_err() && Scope::parse("a\\b").is_err() && Scope::parse("").is_err());
}

#[test]
fn a_refresh_lands_only_on_the_version_whose_refresh_token_was_used() {
    let oauth = Command::ConnectThroughProvider {
        connection_id: conn(1),
        service: ServiceName::parse("google-calendar").expect("valid"),
        name: ConnectionName::parse("Calendar").expect("valid"),
        agent_id: None,
        skill: None,
        scopes: vec![],
    };
    let refresh = |from_version| Command::RefreshCredential { connection_id: conn(1), from_version };
    let (first, state) = given_when(vec![oauth.clone()], "alice", refresh(1));
    assert_eq!(first, Ok(vec![Event::CredentialRefreshed { connection_id: conn(1), credential_version: 2 }]));
    assert_eq!(state.connections[&conn(1)].credential_version, 2);
    let (late, _) = given_when(vec![oauth.clone(), refresh(1)], "alice", refresh(1));
    assert_eq!(late, Ok(vec![]), "a second refresh from version 1 changes nothing");
    let (stranger, _) = given_when(vec![oauth.clone()], "bob", refresh(1));
    assert_eq!(stranger, Err(DomainError::NotFound));
    let (pasted, _) = given_when(
        vec![create(2, None)],
        "alice",
        Command::RefreshCredential { connection_id: conn(2), from_version: 1 },
    );
    assert_eq!(pasted, Ok(vec![]), "only OAuth credentials are refreshed");
}

#[test]
fn a_reconnect_seals_the_next_version_in_place_and_clears_the_mark() {
    let scopes = vec![Scope::parse("calendar.read").expect("valid")];
    let reconnect = Command::ReconnectThroughProvider { connection_id: conn(1), scopes: scopes.clone() };
    let history = vec![create(1, Some("a1")), Command::SetDefault { connection_id: conn(1) }, report(1, 1)];
    let (events, state) = given_when(history.clone(), "alice", reconnect.clone());
    assert_eq!(
        events,
        Ok(vec![
            Event::CredentialRotated {
                connection_id: conn(1),
                credential_version: 2,
                credential_kind: CredentialKind::Oauth2
            },
            Event::OauthGranted { connection_id: conn(1), scopes },
        ])
    );
    let connection = &state.connections[&conn(1)];
    assert!(!connection.needs_attention);
    assert_eq!(
        (state.default, state.agents_of(conn(1))),
        (Some(conn(1)), vec![agent("a1")]),
        "agents and default stay"
    );
    let (foreign, _) = given_when(history.clone(), "bob", reconnect.clone());
    assert_eq!(foreign, Err(DomainError::NotFound));
    let mut revoked = history;
    revoked.push(Command::RevokeConnection { connection_id: conn(1) });
    let (refused, _) = given_when(revoked, "alice", reconnect);
    assert_eq!(refused, Err(DomainError::Revoked(conn(1))));
}

#[test]
fn an_upstream_revocation_is_recorded_only_for_a_revoked_connection_of_the_actor() {
    let record =
        Command::RecordUpstreamRevocation { connection_id: conn(1), outcome: UpstreamOutcome::Revoked, attempts: 2 };
    let (active, _) = given_when(vec![create(1, None)], "alice", record.clone());
    assert_eq!(active, Ok(vec![]), "an active connection has nothing revoked upstream");
    let history = vec![create(1, None), Command::RevokeConnection { connection_id: conn(1) }];
    let (recorded, _) = given_when(history.clone(), "alice", record.clone());
    assert_eq!(
        recorded,
        Ok(vec![Event::UpstreamRevoked { connection_id: conn(1), outcome: UpstreamOutcome::Revoked, attempts: 2 }])
    );
    let (foreign, _) = given_when(history, "bob", record);
    assert_eq!(foreign, Err(DomainError::NotFound));
}

#[test]
fn a_rewrap_is_recorded_for_an_active_connection_of_the_actor_only() {
    let (k1, k2) = (MasterKeyId::parse("k1").expect("valid"), MasterKeyId::parse("k2").expect("valid"));
    let rewrap = Command::RewrapDataKey { connection_id: conn(1), from_key_id: k1.clone(), to_key_id: k2.clone() };
    let (events, _) = given_when(vec![create(1, None)], "alice", rewrap.clone());
    assert_eq!(
        events,
        Ok(vec![Event::DataKeyRewrapped { connection_id: conn(1), from_key_id: k1.clone(), to_key_id: k2 }])
    );
    let same = Command::RewrapDataKey { connection_id: conn(1), from_key_id: k1.clone(), to_key_id: k1 };
    assert_eq!(given_when(vec![create(1, None)], "alice", same).0, Ok(vec![]));
    assert_eq!(given_when(vec![create(1, None)], "bob", rewrap.clone()).0, Err(DomainError::NotFound));
    let revoked = vec![create(1, None), Command::RevokeConnection { connection_id: conn(1) }];
    assert_eq!(given_when(revoked, "alice", rewrap).0, Err(DomainError::Revoked(conn(1))));
}
