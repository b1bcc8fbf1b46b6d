//! Exactly once and in log order, with the documented headers and payload.

use std::time::Duration;

use connections_fanout::Envelope;

use crate::Harness;

fn envelope_schema() -> jsonschema::Validator {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../schemas/nats/envelope.v1.json");
    let schema = serde_json::from_str(&std::fs::read_to_string(path).expect("read schema")).expect("schema is JSON");
    jsonschema::validator_for(&schema).expect("schema compiles")
}

fn notice_schema() -> jsonschema::Validator {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../schemas/nats/notice.v1.json");
    let schema = serde_json::from_str(&std::fs::read_to_string(path).expect("read schema")).expect("schema is JSON");
    jsonschema::validator_for(&schema).expect("schema compiles")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_reaches_the_stream_once_in_log_order_with_headers() {
    let harness = Harness::new().await;
    harness.append(40, 5).await;
    let relay = harness.relay();
    // Concurrent writers while the relay runs.
    let writers: Vec<_> = (0..4).map(|_| harness.append(40, 7)).collect();
    futures_util::future::join_all(writers).await;
    let stream = harness.converged().await;
    relay.stop().await;
    assert_eq!(stream.len(), 200);

    let schema = envelope_schema();
    let mut previous = None;
    for (sequence, headers, envelope) in &stream {
        let value = serde_json::to_value(envelope).expect("envelope serializes");
        let errors: Vec<String> = schema.iter_errors(&value).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "envelope {sequence} breaks its schema: {errors:?}");
        assert_eq!(envelope.previous, previous, "envelope {sequence} names the wrong predecessor");
        previous = Some(envelope.cursor);
        let header = |name: &str| headers.get(name).map(|v| v.as_str().to_owned());
        assert_eq!(header("Nats-Msg-Id"), Some(envelope.event_id.to_string()));
        assert_eq!(header("Connections-Position"), Some(envelope.cursor.position.to_string()));
        assert_eq!(header("Connections-Transaction-Id"), Some(envelope.cursor.transaction_id.to_string()));
        assert_eq!(header("Connections-Stream-Id"), Some(envelope.stream_id.clone()));
        assert_eq!(header("Connections-Stream-Version"), Some(envelope.stream_version.to_string()));
        assert_eq!(header("Connections-Event-Type"), Some(envelope.event_type.clone()));
        assert_eq!(header("Connections-Schema-Version"), Some("1".to_owned()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_wakes_on_notify_not_on_its_poll() {
    let harness = Harness::new().await;
    let relay = harness.relay_with_poll(Duration::from_secs(60));
    harness.append(1, 1).await;
    // Give the relay time to start and go idle, then append: with a 60 s
    // poll, only the LISTEN/NOTIFY wake-up can deliver within the bound.
    harness.converged().await;
    harness.append(3, 1).await;
    let started = std::time::Instant::now();
    loop {
        if harness.stream_envelopes().await.len() == 4 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "the relay did not wake on NOTIFY");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    relay.stop().await;
    let _: Vec<Envelope> = harness.converged().await.into_iter().map(|(_, _, e)| e).collect();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocations_are_noticed_on_their_connections_subject_and_kept_for_catch_up() {
    use futures_util::StreamExt;
    let harness = Harness::new().await;
    let client = async_nats::connect(crate::nats_url()).await.expect("connect");
    let mut live = client.subscribe(harness.names.notices_wildcard()).await.expect("subscribe");
    let schema = notice_schema();
    let relay = harness.relay();
    harness.append(3, 1).await;
    let stream = harness.converged().await;
    let mut received = Vec::new();
    while received.len() < 3 {
        let message =
            tokio::time::timeout(Duration::from_secs(10), live.next()).await.expect("notice in time").expect("message");
        let payload: serde_json::Value = serde_json::from_slice(&message.payload).expect("JSON");
        assert!(schema.is_valid(&payload), "not a notice.v1.json: {payload}");
        let notice: connections_fanout::Notice = serde_json::from_slice(&message.payload).expect("a notice");
        assert_eq!(message.subject.as_str(), harness.names.connection_notices(&notice.owner, &notice.connection_id));
        assert_eq!(notice.kind, connections_fanout::NoticeKind::Revoked);
        received.push(notice.event_id);
    }
    relay.stop().await;
    let events: Vec<_> = stream.iter().map(|(_, _, e)| e.event_id).collect();
    assert_eq!(received, events, "one notice per revocation, in log order");
    let mut notices = harness.context.get_stream(harness.names.notices_stream()).await.expect("notices stream");
    assert_eq!(notices.info().await.expect("info").state.messages, 3, "notices are kept for runtimes that were away");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_last_in_a_transaction_larger_than_a_batch_is_noticed_first_and_once() {
    // A replacement that moves 150 agents appends 150 `agent_unassigned`
    // events (each with its own notice) and then `connection_revoked`, in
    // one transaction; the relay reads 64 events at a time. The
    // revocation's notice must not wait for the batches before it.
    use connections_store::NewEvent;
    use futures_util::StreamExt;
    let harness = Harness::new().await;
    let client = async_nats::connect(crate::nats_url()).await.expect("connect");
    let mut live = client.subscribe(harness.names.notices_wildcard()).await.expect("subscribe");
    let connection_id = uuid::Uuid::now_v7();
    let event = |event_type, data| NewEvent { event_id: uuid::Uuid::now_v7(), event_type, schema_version: 1, data };
    let agents: Vec<String> = (0..150).map(|n| format!("agent-{n}")).collect();
    let mut events: Vec<NewEvent> = agents
        .iter()
        .map(|agent| {
            let data = serde_json::json!({"connection_id": connection_id, "agent_id": agent, "reason": "replaced"});
            event("agent_unassigned", data)
        })
        .collect();
    let revoked = serde_json::json!({"connection_id": connection_id, "affected_agents": agents});
    events.push(event("connection_revoked", revoked));
    let revocation_id = events.last().expect("revocation").event_id;
    append_to_alices_stream(&harness, events).await;
    let relay = harness.relay();
    let mut received = Vec::new();
    while received.len() < 151 {
        let message =
            tokio::time::timeout(Duration::from_secs(10), live.next()).await.expect("notice in time").expect("message");
        let notice: connections_fanout::Notice = serde_json::from_slice(&message.payload).expect("a notice");
        received.push((notice.kind, notice.event_id));
    }
    // Nothing more: no notice is sent twice.
    let extra = tokio::time::timeout(Duration::from_millis(500), live.next()).await;
    assert!(extra.is_err(), "an extra notice: {extra:?}");
    relay.stop().await;
    assert_eq!(received[0], (connections_fanout::NoticeKind::Revoked, revocation_id), "the revocation comes first");
    let bindings = received.iter().filter(|(kind, _)| *kind == connections_fanout::NoticeKind::BindingChanged).count();
    assert_eq!(bindings, 150);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_urgent_notice_the_committing_instance_sent_is_not_sent_again() {
    // A revoke's instance publishes its notice itself (`UrgentNotices`).
    // The stream would drop the relay's copy, but every runtime on the
    // subject would still get it: the relay sends only what is missing.
    let harness = Harness::new().await;
    let client = async_nats::connect(crate::nats_url()).await.expect("connect");
    let mut live = client.subscribe(harness.names.notices_wildcard()).await.expect("subscribe");
    let relay = harness.relay();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while harness.context.get_stream(harness.names.notices_stream()).await.is_err() {
        assert!(tokio::time::Instant::now() < deadline, "the relay made no notices stream");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (sent, missing) = (uuid::Uuid::now_v7(), uuid::Uuid::now_v7());
    let events = vec![revocation(sent), revocation(missing)];
    // The committing instance's copy of the first one's notice.
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", format!("notice-{}", events[0].event_id).as_str());
    let subject = harness.names.connection_notices("alice", &sent.to_string());
    let ack = harness.context.publish_with_headers(subject.clone(), headers, "urgent".into()).await.expect("publish");
    ack.await.expect("stored");
    append_to_alices_stream(&harness, events).await;
    assert_eq!(harness.converged().await.len(), 2);
    let received = heard(&mut live).await;
    relay.stop().await;
    let other = harness.names.connection_notices("alice", &missing.to_string());
    assert_eq!(received.len(), 2, "{received:?}");
    assert_eq!((received[0].0.as_str(), &received[0].1[..]), (subject.as_str(), &b"urgent"[..]));
    assert_eq!(received[1].0, other, "the notice nobody sent is the relay's");
    let mut notices = harness.context.get_stream(harness.names.notices_stream()).await.expect("notices stream");
    assert_eq!(notices.info().await.expect("info").state.messages, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_urgent_notice_its_own_instance_had_stored_is_not_sent_again() {
    // The committing instance's `UrgentNotices` records what the notices
    // stream acknowledged; the relay of the same process skips those
    // without asking the stream. (Here the record is made by hand and the
    // stream holds no copy: only the record can keep the relay quiet.)
    let harness = Harness::new().await;
    let client = async_nats::connect(crate::nats_url()).await.expect("connect");
    let mut live = client.subscribe(harness.names.notices_wildcard()).await.expect("subscribe");
    client.flush().await.expect("flush");
    let signals = connections_fanout::Signals::new();
    let relay = harness.relay_with(Duration::from_millis(200), signals.clone());
    let (recorded, unknown) = (uuid::Uuid::now_v7(), uuid::Uuid::now_v7());
    let events = vec![revocation(recorded), revocation(unknown)];
    let stored = format!("notice-{}", events[0].event_id);
    signals.stored_notices.insert(stored.clone());
    append_to_alices_stream(&harness, events).await;
    assert_eq!(harness.converged().await.len(), 2);
    let received: Vec<String> = heard(&mut live).await.into_iter().map(|(subject, _)| subject).collect();
    relay.stop().await;
    assert_eq!(received, vec![harness.names.connection_notices("alice", &unknown.to_string())]);
    assert!(!signals.stored_notices.take(&stored), "the relay took the record");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_waits_for_its_own_instances_copy_still_being_sent() {
    // The command and the relay hear of the commit at the same moment: a
    // copy still being sent is waited for, then skipped once acknowledged
    // (not sent a second time behind it); one given up is sent by the relay.
    let harness = Harness::new().await;
    let client = async_nats::connect(crate::nats_url()).await.expect("connect");
    let mut live = client.subscribe(harness.names.notices_wildcard()).await.expect("subscribe");
    client.flush().await.expect("flush");
    let signals = connections_fanout::Signals::new();
    let relay = harness.relay_with(Duration::from_millis(50), signals.clone());
    let (acknowledged, given_up) = (uuid::Uuid::now_v7(), uuid::Uuid::now_v7());
    let events = vec![revocation(acknowledged), revocation(given_up)];
    let sending = signals.stored_notices.sending(format!("notice-{}", events[0].event_id));
    let abandoned = signals.stored_notices.sending(format!("notice-{}", events[1].event_id));
    append_to_alices_stream(&harness, events).await;
    // The relay (polling every 50 ms) is waiting on both by now, within
    // its bound (300 ms); neither has settled.
    tokio::time::sleep(Duration::from_millis(150)).await;
    sending.stored();
    drop(abandoned);
    assert_eq!(harness.converged().await.len(), 2);
    let received: Vec<String> = heard(&mut live).await.into_iter().map(|(subject, _)| subject).collect();
    relay.stop().await;
    assert_eq!(received, vec![harness.names.connection_notices("alice", &given_up.to_string())]);
}

/// The notices `live` hears until it has been quiet for 500 ms: subject and payload.
async fn heard(live: &mut async_nats::Subscriber) -> Vec<(String, bytes::Bytes)> {
    use futures_util::StreamExt;
    let mut received = Vec::new();
    while let Ok(Some(message)) = tokio::time::timeout(Duration::from_millis(500), live.next()).await {
        received.push((message.subject.to_string(), message.payload));
    }
    received
}

/// A one-event revoke (`connection_revoked` v3) of `connection_id`, ending no binding.
fn revocation(connection_id: uuid::Uuid) -> connections_store::NewEvent {
    connections_store::NewEvent {
        event_id: uuid::Uuid::now_v7(),
        event_type: "connection_revoked",
        schema_version: 3,
        data: serde_json::json!({"connection_id": connection_id, "affected_agents": []}),
    }
}

/// Appends `events` to alice's github stream in one transaction, and wakes
/// the relay after the commit as the command handler does.
async fn append_to_alices_stream(harness: &Harness, events: Vec<connections_store::NewEvent>) {
    use connections_store::{EventLog, Metadata, StreamAppend, StreamId};
    let mut pooled = harness.db.database.pool().get().await.expect("pool");
    let transaction = pooled.transaction().await.expect("begin");
    let append = StreamAppend {
        stream_id: StreamId::parse("owner-service/alice/github").expect("stream id"),
        expected_version: None,
        events,
    };
    let metadata =
        Metadata { actor: "alice".into(), command_id: uuid::Uuid::now_v7(), correlation_id: uuid::Uuid::now_v7() };
    EventLog::append(&transaction, &[append], &metadata).await.expect("append");
    transaction.commit().await.expect("commit");
    harness.elsewhere.committed(&harness.db.database);
}
