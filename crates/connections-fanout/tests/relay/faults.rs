//! Crashes, lost and foreign streams, competing relays.

use bytes::Bytes;

use crate::Harness;

fn assert_exactly_once(stream: &[(u64, async_nats::HeaderMap, connections_fanout::Envelope)]) {
    let ids: std::collections::HashSet<_> = stream.iter().map(|(_, _, e)| e.event_id).collect();
    assert_eq!(ids.len(), stream.len(), "an event is in the stream twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_relay_is_replaced_without_duplicates_or_gaps() {
    let harness = Harness::new().await;
    let relay = harness.relay();
    harness.append(60, 3).await;
    // Crash mid-stream (the relay may be between publishing and its next read).
    relay.crash().await;
    harness.append(60, 3).await;
    let relay = harness.relay();
    let stream = harness.converged().await;
    relay.stop().await;
    assert_eq!(stream.len(), 120);
    assert_exactly_once(&stream);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_stream_is_recreated_and_refilled_from_the_log() {
    let harness = Harness::new().await;
    let relay = harness.relay();
    harness.append(30, 3).await;
    harness.converged().await;
    harness.context.delete_stream(harness.names.events_stream()).await.expect("delete the stream");
    harness.append(10, 3).await;
    let stream = harness.converged().await;
    relay.stop().await;
    assert_eq!(stream.len(), 40);
    assert_exactly_once(&stream);
    assert_eq!(stream[0].0, 1, "the refilled stream starts again at sequence 1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_is_not_this_logs_is_rebuilt_not_trusted() {
    let harness = Harness::new().await;
    // Another log's stream under our prefix: events from a different database.
    let other = Harness::sharing_prefix_with(&harness).await;
    other.append(5, 1).await;
    let relay = other.relay();
    other.converged().await;
    relay.stop().await;
    drop(other); // its database goes; its stream stays under our prefix

    harness.append(3, 1).await;
    let relay = harness.relay();
    let stream = harness.converged().await;
    relay.stop().await;
    assert_eq!(stream.len(), 3, "the foreign events must be gone");
}

/// Someone else writes into the events stream (not an envelope).
async fn write_foreign_message(harness: &Harness) {
    let subject = harness.names.event_subject("intruder", "svc", "connection_revoked");
    harness
        .context
        .publish(subject, Bytes::from_static(b"not an envelope"))
        .await
        .expect("publish")
        .await
        .expect("ack");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_write_into_the_stream_fences_the_relay_which_rebuilds() {
    let harness = Harness::new().await;
    let relay = harness.relay();
    harness.append(10, 2).await;
    harness.converged().await;
    // Someone else writes into the stream: the relay's next fenced publish fails.
    write_foreign_message(&harness).await;
    harness.append(5, 2).await;
    let stream = harness.converged().await;
    relay.stop().await;
    assert_eq!(stream.len(), 15);
    assert_exactly_once(&stream);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_write_ahead_of_a_pipelined_batch_has_the_stream_refilled_not_left_with_a_hole() {
    // The batch's first publish is refused (the foreign message took its
    // sequence); the next ones match the sequence after it and would be
    // taken, leaving the first event out of a stream whose length and last
    // events still look right. The relay deletes it instead, and refills it.
    let harness = Harness::new().await;
    let relay = harness.relay();
    harness.append(4, 2).await;
    harness.converged().await;
    write_foreign_message(&harness).await;
    harness.append_together(6).await;
    let stream = harness.converged().await;
    relay.stop().await;
    assert_eq!(stream.len(), 10, "every event of the log, the batch's first included");
    assert_exactly_once(&stream);
    assert_eq!(stream[0].0, 1, "the refilled stream starts again at sequence 1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_relays_at_once_publish_each_event_exactly_once() {
    let harness = Harness::new().await;
    let first = harness.relay();
    let second = harness.relay();
    let writers: Vec<_> = (0..3).map(|_| harness.append(50, 5)).collect();
    futures_util::future::join_all(writers).await;
    let stream = harness.converged().await;
    // Kill the leader; the other takes over and continues.
    first.crash().await;
    harness.append(20, 5).await;
    let stream_after = harness.converged().await;
    second.stop().await;
    assert_eq!(stream.len(), 150);
    assert_eq!(stream_after.len(), 170);
    assert_exactly_once(&stream_after);
}
