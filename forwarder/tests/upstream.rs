//! The forwarder against a real HTTP server that fails on a script, over a real buffer.
//!
//! Time is real here: paused tokio time auto-advances whenever the runtime waits on a socket,
//! which would fire per-attempt timeouts while the server is still answering. Durations are kept
//! short instead; the batching triggers are also covered with made-up instants in
//! `src/batcher.rs`.

mod support;

use std::time::Duration;

use gateway_buffer::{DeadPayload, Lane, Record, Stored};
use gateway_forwarder::{
    Compression, DEAD_LETTER_ORIGIN, DEAD_LETTER_REASON, Forwarder, ForwarderError, UpstreamState,
    encode_body,
};
use std::time::Instant;
use support::{Running, TestBuffer, alarm, options, reading, scripted};
use test_peers::{Reply, Upstream};

const WAIT: Duration = Duration::from_secs(10);

async fn append(buffer: &gateway_buffer::Buffer, records: Vec<Record>) -> Vec<Stored> {
    let seqs = buffer.append(records.clone()).await.unwrap();
    seqs.into_iter()
        .zip(records)
        .map(|(seq, record)| Stored { seq, record })
        .collect()
}

#[tokio::test]
async fn batches_are_cut_at_the_record_count_with_exactly_those_records() {
    let dir = tempfile::tempdir().unwrap();
    let tb = TestBuffer::open(dir.path());
    let upstream = Upstream::start().await;
    let mut o = options(&upstream.url());
    o.batch_max_records = 3;
    o.linger = Duration::from_secs(30);
    let stored = append(&tb.buffer, (0..7).map(reading).collect()).await;
    let (handle, driver) = Forwarder::new(tb.buffer.clone(), o).unwrap();
    let fwd = Running::spawn(handle, driver);

    upstream.wait_until(WAIT, |r| r.len() >= 2).await;
    // A stop lets sends on the wire finish and starts none: after it, nothing more arrives.
    fwd.stop().await;
    let got = upstream.batches();
    assert_eq!(got.len(), 2, "the seventh record lingers");
    assert_eq!(
        got[0].json,
        encode_body("gw-test", Lane::Readings, &stored[0..3])
    );
    assert_eq!(
        got[1].json,
        encode_body("gw-test", Lane::Readings, &stored[3..6])
    );
    assert_eq!(
        got[0].idempotency_key.clone().unwrap(),
        format!("gw-test:readings:{}-{}", stored[0].seq, stored[2].seq)
    );
    assert_eq!(
        tb.buffer.acked("upstream", Lane::Readings),
        Some(stored[5].seq)
    );
    tb.close().await;
}

#[tokio::test]
async fn batches_are_cut_before_the_record_that_would_exceed_the_byte_limit() {
    let dir = tempfile::tempdir().unwrap();
    let tb = TestBuffer::open(dir.path());
    let upstream = Upstream::start().await;
    let mut o = options(&upstream.url());
    o.batch_max_records = 1_000;
    o.batch_max_bytes = 700;
    o.linger = Duration::from_millis(50);
    let stored = append(&tb.buffer, (0..40).map(reading).collect()).await;
    let (handle, driver) = Forwarder::new(tb.buffer.clone(), o).unwrap();
    let fwd = Running::spawn(handle, driver);

    upstream
        .wait_until(WAIT, |r| {
            r.iter().map(|r| r.seqs().len()).sum::<usize>() == 40
        })
        .await;
    // Several batches are in flight at once (max_in_flight): they may arrive in any order.
    let mut got = upstream.batches();
    got.sort_by_key(|r| r.seqs()[0]);
    assert!(got.len() > 1);
    let mut next = 0;
    for (i, req) in got.iter().enumerate() {
        let n = req.seqs().len();
        let batch = &stored[next..next + n];
        assert_eq!(req.json, encode_body("gw-test", Lane::Readings, batch));
        assert!(
            req.json.len() <= 700,
            "batch {i} is {} bytes",
            req.json.len()
        );
        if next + n < stored.len() {
            let grown = encode_body("gw-test", Lane::Readings, &stored[next..=next + n]);
            assert!(grown.len() > 700, "batch {i} was cut early");
        }
        next += n;
    }
    assert_eq!(next, 40);
    fwd.stop().await;
    tb.close().await;
}

#[tokio::test]
async fn a_partial_batch_goes_out_when_linger_expires() {
    let dir = tempfile::tempdir().unwrap();
    let tb = TestBuffer::open(dir.path());
    let upstream = Upstream::start().await;
    let mut o = options(&upstream.url());
    o.batch_max_records = 100;
    // Long enough that the second append surely lands inside it on a loaded machine.
    o.linger = Duration::from_millis(1_000);
    let (handle, driver) = Forwarder::new(tb.buffer.clone(), o).unwrap();
    let fwd = Running::spawn(handle, driver);

    let first = append(&tb.buffer, (0..3).map(reading).collect()).await;
    let appended_at = Instant::now();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let second = append(&tb.buffer, (3..5).map(reading).collect()).await;
    upstream.wait_until(WAIT, |r| !r.is_empty()).await;
    let got = upstream.batches();
    let waited = got[0].arrived - appended_at;
    assert!(
        waited >= Duration::from_millis(990),
        "sent after {waited:?}: the linger runs from the first record"
    );
    assert!(
        waited < Duration::from_millis(4_000),
        "sent after {waited:?}: the second append must not restart the linger"
    );
    let all: Vec<Stored> = first.into_iter().chain(second).collect();
    assert_eq!(got[0].json, encode_body("gw-test", Lane::Readings, &all));
    fwd.stop().await;
    tb.close().await;
}

#[tokio::test]
async fn a_batch_answered_503_503_200_is_delivered_once_with_the_same_key_and_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let tb = TestBuffer::open(dir.path());
    let upstream = scripted([Reply::Status(503), Reply::Status(503)]).await;
    let mut o = options(&upstream.url());
    o.compression = Compression::Gzip;
    o.linger = Duration::ZERO;
    let stored = append(&tb.buffer, (0..3).map(reading).collect()).await;
    let (handle, driver) = Forwarder::new(tb.buffer.clone(), o).unwrap();
    let fwd = Running::spawn(handle.clone(), driver);

    upstream.wait_until(WAIT, |r| r.len() >= 3).await;
    fwd.stop().await;
    let got = upstream.batches();
    assert_eq!(got.len(), 3, "delivered exactly once");
    let key = format!("gw-test:readings:{}-{}", stored[0].seq, stored[2].seq);
    for req in &got {
        assert_eq!(req.idempotency_key.clone().unwrap(), key);
        assert_eq!(req.raw, got[0].raw, "every retry sends the same bytes");
    }
    assert_eq!(got[0].json, encode_body("gw-test", Lane::Readings, &stored));
    let stats = handle.stats();
    assert_eq!(stats.batches_sent, 1);
    assert_eq!(stats.attempts, 3);
    assert_eq!(stats.retries, 2);
    assert_eq!(stats.failed_retryable, 2);
    assert_eq!(stats.records_delivered.readings, 3);
    assert_eq!(stats.upstream, UpstreamState::Ok);
    assert_eq!(stats.latency.count, 3);
    assert_eq!(
        tb.buffer.acked("upstream", Lane::Readings),
        Some(stored[2].seq)
    );
    tb.close().await;
}

#[tokio::test]
async fn a_429_with_retry_after_2_delays_the_next_attempt_by_at_least_two_seconds() {
    let dir = tempfile::tempdir().unwrap();
    let tb = TestBuffer::open(dir.path());
    let upstream = scripted([Reply::RetryAfter {
        status: 429,
        secs: 2,
    }])
    .await;
    let mut o = options(&upstream.url());
    o.linger = Duration::ZERO;
    append(&tb.buffer, vec![reading(0)]).await;
    let (handle, driver) = Forwarder::new(tb.buffer.clone(), o).unwrap();
    let fwd = Running::spawn(handle.clone(), driver);

    upstream
        .wait_until(WAIT, |r| r.len() == 1 && handle.stats().backoff_ms >= 2_000)
        .await;
    upstream.wait_until(WAIT, |r| r.len() == 2).await;
    let got = upstream.batches();
    let gap = got[1].arrived - got[0].arrived;
    assert!(gap >= Duration::from_secs(2), "retried after {gap:?}");
    assert_eq!(
        got[0].idempotency_key.clone().unwrap(),
        got[1].idempotency_key.clone().unwrap()
    );
    fwd.stop().await;
    tb.close().await;
}

#[tokio::test]
async fn a_400_parks_the_batch_as_a_dead_letter_and_the_next_batch_is_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let tb = TestBuffer::open(dir.path());
    let upstream = scripted([Reply::Body {
        status: 400,
        body: "record 2: bad unit",
    }])
    .await;
    let mut o = options(&upstream.url());
    o.batch_max_records = 2;
    let stored = append(&tb.buffer, (0..4).map(reading).collect()).await;
    let (handle, driver) = Forwarder::new(tb.buffer.clone(), o).unwrap();
    let fwd = Running::spawn(handle.clone(), driver);

    upstream.wait_until(WAIT, |r| r.len() >= 2).await;
    fwd.stop().await;
    assert_eq!(upstream.batches().len(), 2, "a rejection is not retried");
    assert_eq!(
        upstream.delivered_seqs("readings"),
        vec![stored[2].seq, stored[3].seq]
    );

    let letters = tb.buffer.dead_letters().list(10, None).unwrap();
    assert_eq!(letters.len(), 1);
    let letter = &letters[0];
    assert_eq!(letter.reason, DEAD_LETTER_REASON);
    assert_eq!(letter.origin, DEAD_LETTER_ORIGIN);
    assert!(letter.detail.contains("400"), "{}", letter.detail);
    assert!(
        letter.detail.contains("record 2: bad unit"),
        "{}",
        letter.detail
    );
    assert_eq!(
        letter.payload,
        DeadPayload::Records {
            lane: Lane::Readings,
            records: stored[0..2].to_vec()
        }
    );
    let stats = handle.stats();
    assert_eq!(stats.failed_permanent, 1);
    assert_eq!(stats.dead_lettered_batches, 1);
    assert_eq!(stats.records_dead_lettered.readings, 2);
    assert_eq!(
        tb.buffer.acked("upstream", Lane::Readings),
        Some(stored[3].seq)
    );
    tb.close().await;
}

#[tokio::test]
async fn everything_appended_while_the_server_is_down_arrives_in_order_once_it_is_up() {
    let dir = tempfile::tempdir().unwrap();
    let tb = TestBuffer::open(dir.path());
    let mut upstream = Upstream::start_down().await;
    let mut o = options(&upstream.url());
    o.batch_max_records = 10;
    let (handle, driver) = Forwarder::new(tb.buffer.clone(), o).unwrap();
    let fwd = Running::spawn(handle.clone(), driver);

    let mut expected = Vec::new();
    for chunk in 0..5 {
        let stored = append(
            &tb.buffer,
            (chunk * 7..chunk * 7 + 7).map(reading).collect(),
        )
        .await;
        expected.extend(stored.iter().map(|s| s.seq));
    }
    // Refused connections count as failures and mark the upstream down.
    let deadline = Instant::now() + WAIT;
    while handle.stats().failed_retryable < 3 || handle.stats().upstream != UpstreamState::Down {
        assert!(Instant::now() < deadline, "{:?}", handle.stats());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let stats = handle.stats();
    assert!(stats.down_since_ms.is_some());

    upstream.come_up().await;
    upstream
        .wait_until(WAIT, |r| {
            r.iter().map(|r| r.seqs().len()).sum::<usize>() == expected.len()
        })
        .await;
    assert_eq!(upstream.delivered_seqs("readings"), expected);
    assert_eq!(handle.stats().upstream, UpstreamState::Ok);
    fwd.stop().await;
    tb.close().await;
}

#[tokio::test]
async fn a_hanging_server_trips_the_timeout_and_the_batch_is_retried() {
    let dir = tempfile::tempdir().unwrap();
    let tb = TestBuffer::open(dir.path());
    let upstream = scripted([Reply::Slow {
        status: 200,
        delay: Duration::from_secs(5),
    }])
    .await;
    let mut o = options(&upstream.url());
    o.timeout = Duration::from_millis(200);
    o.linger = Duration::ZERO;
    let stored = append(&tb.buffer, (0..2).map(reading).collect()).await;
    let (handle, driver) = Forwarder::new(tb.buffer.clone(), o).unwrap();
    let fwd = Running::spawn(handle.clone(), driver);

    upstream.wait_until(WAIT, |r| r.len() >= 2).await;
    let got = upstream.batches();
    let gap = got[1].arrived - got[0].arrived;
    assert!(gap >= Duration::from_millis(200), "retried after {gap:?}");
    assert!(gap < Duration::from_secs(3), "retried after {gap:?}");
    assert_eq!(
        got[0].idempotency_key.clone().unwrap(),
        got[1].idempotency_key.clone().unwrap()
    );
    assert_eq!(got[0].raw, got[1].raw);
    upstream
        .wait_until(WAIT, |_| handle.stats().batches_sent == 1)
        .await;
    let stats = handle.stats();
    assert_eq!(stats.timeouts, 1);
    assert_eq!(stats.records_delivered.readings, 2);
    fwd.stop().await;
    assert_eq!(
        tb.buffer.acked("upstream", Lane::Readings),
        Some(stored[1].seq)
    );
    tb.close().await;
}

#[tokio::test]
async fn gzip_bodies_decode_to_the_same_json_and_carry_the_wire_headers() {
    let dir = tempfile::tempdir().unwrap();
    let tb = TestBuffer::open(dir.path());
    let upstream = Upstream::start().await;
    let mut o = options(&upstream.url());
    o.compression = Compression::Gzip;
    o.bearer_token = Some("t0ken".into());
    o.batch_max_records = 50;
    let readings = append(&tb.buffer, (0..50).map(reading).collect()).await;
    let alarms = append(&tb.buffer, (0..2).map(alarm).collect()).await;
    let (handle, driver) = Forwarder::new(tb.buffer.clone(), o).unwrap();
    let fwd = Running::spawn(handle, driver);

    upstream.wait_until(WAIT, |r| r.len() >= 2).await;
    let got = upstream.batches();
    let alarm_req = got.iter().find(|r| r.lane == "alarms").unwrap();
    let reading_req = got.iter().find(|r| r.lane == "readings").unwrap();
    assert_eq!(
        alarm_req.json,
        encode_body("gw-test", Lane::Alarms, &alarms)
    );
    assert_eq!(
        reading_req.json,
        encode_body("gw-test", Lane::Readings, &readings)
    );
    assert!(reading_req.raw.len() < reading_req.json.len() / 3);
    for req in &got {
        assert_eq!(req.headers["content-encoding"], "gzip");
        assert_eq!(req.headers["content-type"], "application/json");
        assert_eq!(req.headers["authorization"], "Bearer t0ken");
    }
    let v = serde_json::from_slice::<serde_json::Value>(&reading_req.json).unwrap();
    assert_eq!(v["gateway_id"], "gw-test");
    assert_eq!(v["records"][1]["unit"], serde_json::Value::Null);
    assert_eq!(v["records"][0]["source"], "serial");
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&alarm_req.json).unwrap()["records"][0]["state"],
        "raised"
    );
    fwd.stop().await;
    tb.close().await;
}

#[tokio::test]
async fn alarms_appended_behind_a_10000_reading_backlog_reach_the_server_first() {
    let dir = tempfile::tempdir().unwrap();
    let tb = TestBuffer::open(dir.path());
    let upstream = Upstream::start().await;
    let mut o = options(&upstream.url());
    o.batch_max_records = 500;
    for chunk in 0..10 {
        append(
            &tb.buffer,
            (chunk * 1_000..(chunk + 1) * 1_000).map(reading).collect(),
        )
        .await;
    }
    let alarms = append(&tb.buffer, (0..3).map(alarm).collect()).await;
    let (handle, driver) = Forwarder::new(tb.buffer.clone(), o).unwrap();
    let fwd = Running::spawn(handle.clone(), driver);

    upstream
        .wait_until(WAIT, |_| {
            handle.stats().records_delivered.readings == 10_000
        })
        .await;
    let got = upstream.batches();
    assert_eq!(got[0].lane, "alarms");
    assert_eq!(
        got[0].seqs(),
        alarms.iter().map(|s| s.seq).collect::<Vec<_>>()
    );
    assert_eq!(got.len(), 1 + 20);
    fwd.stop().await;
    tb.close().await;
}

#[tokio::test]
async fn an_alarm_appended_while_a_backlog_drains_overtakes_the_rest_of_it() {
    let dir = tempfile::tempdir().unwrap();
    let tb = TestBuffer::open(dir.path());
    // A slow upstream: each readings batch takes a while, so the backlog drains for seconds.
    let upstream = scripted((0..40).map(|_| Reply::Slow {
        status: 200,
        delay: Duration::from_millis(50),
    }))
    .await;
    let mut o = options(&upstream.url());
    o.batch_max_records = 250;
    append(&tb.buffer, (0..10_000).map(reading).collect()).await;
    let (handle, driver) = Forwarder::new(tb.buffer.clone(), o).unwrap();
    let fwd = Running::spawn(handle.clone(), driver);

    upstream.wait_until(WAIT, |r| r.len() >= 3).await;
    append(&tb.buffer, vec![alarm(1)]).await;
    upstream
        .wait_until(WAIT, |r| r.iter().any(|r| r.lane == "alarms"))
        .await;
    let readings_before_alarm = upstream.batches().len() - 1;
    assert!(
        readings_before_alarm < 10,
        "the alarm waited behind {readings_before_alarm} readings batches"
    );
    fwd.stop().await;
    tb.close().await;
}

#[tokio::test]
async fn a_restart_in_the_middle_of_a_retry_loop_resends_the_same_batch() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = scripted((0..1_000).map(|_| Reply::Status(503))).await;
    let stored;
    let failing_key;
    let failing_body;
    {
        let tb = TestBuffer::open(dir.path());
        let mut o = options(&upstream.url());
        o.batch_max_records = 5;
        o.compression = Compression::Gzip;
        stored = append(&tb.buffer, (0..12).map(reading).collect()).await;
        let (handle, driver) = Forwarder::new(tb.buffer.clone(), o).unwrap();
        let fwd = Running::spawn(handle, driver);
        upstream.wait_until(WAIT, |r| r.len() >= 3).await;
        // Drop everything, as a crash would: no graceful shutdown of the forwarder.
        fwd.task.abort();
        let _ = fwd.task.await;
        let got = upstream.batches();
        failing_key = got[0].idempotency_key.clone().unwrap();
        failing_body = got[0].raw.clone();
        assert!(
            got.iter()
                .all(|r| r.idempotency_key.clone().unwrap() == failing_key)
        );
        assert_eq!(
            failing_key,
            format!("gw-test:readings:{}-{}", stored[0].seq, stored[4].seq)
        );
        tb.close().await;
    }

    let upstream = Upstream::start().await;
    let tb = TestBuffer::open(dir.path());
    let more = append(&tb.buffer, (12..20).map(reading).collect()).await;
    let mut o = options(&upstream.url());
    // Even with different batching the in-flight batch is re-sent as it was.
    o.batch_max_records = 100;
    o.compression = Compression::Gzip;
    let (handle, driver) = Forwarder::new(tb.buffer.clone(), o).unwrap();
    let fwd = Running::spawn(handle.clone(), driver);
    upstream
        .wait_until(WAIT, |_| handle.stats().records_delivered.readings == 20)
        .await;
    let got = upstream.batches();
    assert_eq!(got[0].idempotency_key.clone().unwrap(), failing_key);
    assert_eq!(got[0].raw, failing_body, "the same bytes after the restart");
    assert_eq!(
        got[0].seqs(),
        stored[0..5].iter().map(|s| s.seq).collect::<Vec<_>>()
    );
    let expected: Vec<u64> = stored.iter().chain(&more).map(|s| s.seq).collect();
    assert_eq!(upstream.delivered_seqs("readings"), expected);
    fwd.stop().await;
    tb.close().await;
}

#[tokio::test]
async fn several_batches_in_flight_all_arrive_and_the_cursor_reaches_the_end() {
    let dir = tempfile::tempdir().unwrap();
    let tb = TestBuffer::open(dir.path());
    let script = [
        Reply::Slow {
            status: 200,
            delay: Duration::from_millis(100),
        },
        Reply::Status(503),
        Reply::Status(200),
        Reply::Status(500),
    ];
    let upstream = scripted(script).await;
    let mut o = options(&upstream.url());
    o.batch_max_records = 10;
    o.max_in_flight = 4;
    let stored = append(&tb.buffer, (0..100).map(reading).collect()).await;
    let (handle, driver) = Forwarder::new(tb.buffer.clone(), o).unwrap();
    let fwd = Running::spawn(handle.clone(), driver);

    upstream
        .wait_until(WAIT, |_| handle.stats().records_delivered.readings == 100)
        .await;
    let mut delivered = upstream.delivered_seqs("readings");
    delivered.sort_unstable();
    assert_eq!(delivered, stored.iter().map(|s| s.seq).collect::<Vec<_>>());
    fwd.stop().await;
    assert_eq!(
        tb.buffer.acked("upstream", Lane::Readings),
        Some(stored[99].seq)
    );
    tb.close().await;
}

#[tokio::test]
async fn alarm_batches_go_one_at_a_time_even_with_several_readings_batches_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let tb = TestBuffer::open(dir.path());
    // The first alarm batch is refused for a while: with more than one alarm batch in flight the
    // later ones (a clear, say) would be delivered before it.
    let upstream = scripted([Reply::Status(503), Reply::Status(503)]).await;
    let mut o = options(&upstream.url());
    o.batch_max_records = 5;
    o.max_in_flight = 4;
    let stored = append(&tb.buffer, (0..20).map(alarm).collect()).await;
    let (handle, driver) = Forwarder::new(tb.buffer.clone(), o).unwrap();
    let fwd = Running::spawn(handle.clone(), driver);

    upstream
        .wait_until(WAIT, |_| handle.stats().records_delivered.alarms == 20)
        .await;
    assert_eq!(
        upstream.delivered_seqs("alarms"),
        stored.iter().map(|s| s.seq).collect::<Vec<_>>(),
        "alarm batches delivered in seq order"
    );
    fwd.stop().await;
    tb.close().await;
}

#[tokio::test]
async fn replayed_dead_letters_are_sent_before_newer_records_with_their_original_seqs() {
    let dir = tempfile::tempdir().unwrap();
    let tb = TestBuffer::open(dir.path());
    let upstream = Upstream::start().await;
    let old = append(&tb.buffer, (0..3).map(reading).collect()).await;
    // As if these had been rejected, acked, and then replayed by an operator.
    tb.buffer
        .ack("upstream", Lane::Readings, old[2].seq)
        .unwrap();
    tb.buffer
        .requeue(gateway_forwarder::CONSUMER, Lane::Readings, old.clone())
        .unwrap();
    let new = append(&tb.buffer, (3..6).map(reading).collect()).await;
    let (handle, driver) = Forwarder::new(tb.buffer.clone(), options(&upstream.url())).unwrap();
    let fwd = Running::spawn(handle.clone(), driver);

    upstream
        .wait_until(WAIT, |_| handle.stats().records_delivered.readings == 6)
        .await;
    let got = upstream.batches();
    assert_eq!(got[0].json, encode_body("gw-test", Lane::Readings, &old));
    assert_eq!(got[1].json, encode_body("gw-test", Lane::Readings, &new));
    assert!(
        tb.buffer
            .read_requeued(gateway_forwarder::CONSUMER, Lane::Readings, 10)
            .unwrap()
            .is_empty()
    );
    fwd.stop().await;
    tb.close().await;
}

#[tokio::test]
async fn shutdown_with_the_server_down_returns_promptly_and_keeps_the_batch() {
    let dir = tempfile::tempdir().unwrap();
    let tb = TestBuffer::open(dir.path());
    let upstream = scripted((0..1_000).map(|_| Reply::Status(503))).await;
    let mut o = options(&upstream.url());
    o.retry_initial = Duration::from_secs(10);
    o.retry_max = Duration::from_secs(20);
    append(&tb.buffer, (0..3).map(reading).collect()).await;
    let (handle, driver) = Forwarder::new(tb.buffer.clone(), o).unwrap();
    let fwd = Running::spawn(handle, driver);
    upstream.wait_until(WAIT, |r| !r.is_empty()).await;

    let started = Instant::now();
    fwd.stop().await;
    // Well under the backoff (at least half of retry_initial): the stop did not wait it out.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(tb.buffer.acked("upstream", Lane::Readings), None);
    let meta = tb
        .buffer
        .consumer_meta("upstream", "inflight.readings")
        .unwrap()
        .unwrap();
    assert!(!meta.is_empty(), "the in-flight range is remembered");
    tb.close().await;
}

#[tokio::test]
async fn a_bad_url_or_consumer_is_refused_at_construction() {
    // TLS files are checked where the config is loaded (gateway-config's tls tests); an https://
    // URL without them gets the platform's roots.
    let dir = tempfile::tempdir().unwrap();
    let tb = TestBuffer::open(dir.path());
    assert!(Forwarder::new(tb.buffer.clone(), options("https://127.0.0.1:1/ingest")).is_ok());
    assert!(matches!(
        Forwarder::new(tb.buffer.clone(), options("ftp://x/")),
        Err(ForwarderError::InvalidRequest { field: "url", .. })
    ));
    let mut o = options("http://127.0.0.1:1/ingest");
    o.consumer = "not-a-consumer".into();
    assert!(matches!(
        Forwarder::new(tb.buffer.clone(), o),
        Err(ForwarderError::Buffer(
            gateway_buffer::BufferError::UnknownConsumer(_)
        ))
    ));
    tb.close().await;
}

/// Waits (real time) until `cond` holds over the forwarder's stats, or panics after `limit`.
async fn wait_for_stats(
    handle: &gateway_forwarder::ForwarderHandle,
    limit: Duration,
    what: &str,
    cond: impl Fn(&gateway_forwarder::ForwarderStats) -> bool,
) {
    let deadline = Instant::now() + limit;
    loop {
        let stats = handle.stats();
        if cond(&stats) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "not {what} within {limit:?}: {stats:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn an_upstream_answering_503_to_everything_brings_the_concurrency_down_to_one_and_back_up_once_it_recovers()
 {
    let dir = tempfile::tempdir().unwrap();
    let tb = TestBuffer::open(dir.path());
    let upstream = Upstream::start().await;
    // Answers take a while, so several requests are on the wire at once.
    upstream.set_default(Reply::Slow {
        status: 200,
        delay: Duration::from_millis(20),
    });
    let mut o = options(&upstream.url());
    o.batch_max_records = 10;
    o.max_in_flight = 16;
    o.retry_initial = Duration::from_millis(10);
    o.retry_max = Duration::from_millis(50);
    // A backlog of 2,000 batches: more than the test gets through.
    append(&tb.buffer, (0..20_000).map(reading).collect()).await;
    let (handle, driver) = Forwarder::new(tb.buffer.clone(), o).unwrap();
    let fwd = Running::spawn(handle.clone(), driver);

    wait_for_stats(&handle, WAIT, "at full concurrency", |s| {
        s.concurrency == 16
    })
    .await;
    upstream
        .wait_until(WAIT, |_| upstream.max_on_wire() > 8)
        .await;

    upstream.set_default(Reply::Slow {
        status: 503,
        delay: Duration::from_millis(5),
    });
    wait_for_stats(&handle, WAIT, "down to one", |s| s.concurrency == 1).await;
    // Attempts started before the last decrease drain away; from then on, one at a time.
    let failed = handle.stats().failed_retryable;
    wait_for_stats(&handle, WAIT, "past the older attempts", |s| {
        s.failed_retryable >= failed + 16
    })
    .await;
    upstream.reset_max_on_wire();
    let failed = handle.stats().failed_retryable;
    wait_for_stats(&handle, WAIT, "20 more failures", |s| {
        s.failed_retryable >= failed + 20
    })
    .await;
    assert_eq!(upstream.max_on_wire(), 1, "{:?}", handle.stats());
    assert_eq!(handle.stats().concurrency, 1);

    upstream.set_default(Reply::Slow {
        status: 200,
        delay: Duration::from_millis(20),
    });
    wait_for_stats(&handle, WAIT, "climbing again", |s| s.concurrency >= 4).await;
    fwd.stop().await;
    // Whatever was delivered was delivered once per batch key, in whole batches.
    let keys: Vec<String> = upstream
        .delivered()
        .iter()
        .map(|r| r.idempotency_key.clone().unwrap())
        .collect();
    let unique: std::collections::BTreeSet<&String> = keys.iter().collect();
    assert_eq!(unique.len(), keys.len(), "a delivered batch was sent again");
    tb.close().await;
}

#[tokio::test]
async fn a_429_with_retry_after_holds_every_batch_of_both_lanes_for_its_duration() {
    let dir = tempfile::tempdir().unwrap();
    let tb = TestBuffer::open(dir.path());
    let upstream = scripted([Reply::RetryAfter {
        status: 429,
        secs: 2,
    }])
    .await;
    let mut o = options(&upstream.url());
    o.batch_max_records = 10;
    o.max_in_flight = 16;
    o.linger = Duration::ZERO;
    append(&tb.buffer, (0..100).map(reading).collect()).await;
    let (handle, driver) = Forwarder::new(tb.buffer.clone(), o).unwrap();
    let fwd = Running::spawn(handle.clone(), driver);

    wait_for_stats(&handle, WAIT, "held by the 429", |s| s.backoff_ms >= 2_000).await;
    // More of both lanes during the hold: none of it may go before the hold ends.
    append(&tb.buffer, vec![alarm(0)]).await;
    append(&tb.buffer, (100..200).map(reading).collect()).await;
    upstream
        .wait_until(WAIT, |r| {
            r.iter()
                .filter(|r| r.delivered())
                .map(|r| r.seqs().len())
                .sum::<usize>()
                == 201
        })
        .await;
    let got = upstream.batches();
    let first_after = got[1..].iter().map(|r| r.arrived).min().unwrap();
    let gap = first_after - got[0].arrived;
    assert!(
        gap >= Duration::from_secs(2),
        "a request went {gap:?} after the 429 with Retry-After: 2"
    );
    assert!(got.iter().any(|r| r.lane == "alarms" && r.delivered()));
    fwd.stop().await;
    tb.close().await;
}

#[tokio::test]
async fn delivery_resumes_soon_after_the_upstream_returns_however_long_the_backoff_grew() {
    let dir = tempfile::tempdir().unwrap();
    let tb = TestBuffer::open(dir.path());
    let mut upstream = Upstream::start_down().await;
    let mut o = options(&upstream.url());
    // One failure holds the upstream for a minute by the backoff alone.
    o.retry_initial = Duration::from_secs(60);
    o.retry_max = Duration::from_secs(60);
    let stored = append(&tb.buffer, (0..10).map(reading).collect()).await;
    let (handle, driver) = Forwarder::new(tb.buffer.clone(), o).unwrap();
    let fwd = Running::spawn(handle.clone(), driver);
    wait_for_stats(&handle, WAIT, "failing", |s| s.failed_retryable >= 1).await;
    // Down for a while: probes fail meanwhile.
    tokio::time::sleep(gateway_forwarder::PROBE_EVERY * 3).await;

    let back = Instant::now();
    upstream.come_up().await;
    upstream.wait_until(WAIT, |r| !r.is_empty()).await;
    let took = back.elapsed();
    assert!(
        took < Duration::from_secs(30),
        "resumed {took:?} after the upstream came back: the backoff, not the probe"
    );
    eprintln!("delivery resumed {took:?} after the upstream came back (backoff: 60 s)");
    upstream
        .wait_until(WAIT, |r| {
            r.iter().map(|r| r.seqs().len()).sum::<usize>() == stored.len()
        })
        .await;
    fwd.stop().await;
    tb.close().await;
}

#[tokio::test]
async fn a_steady_stream_of_alarms_to_a_slow_upstream_does_not_starve_the_readings() {
    let dir = tempfile::tempdir().unwrap();
    let tb = TestBuffer::open(dir.path());
    let upstream = Upstream::start().await;
    // Every batch takes longer than the gap between alarms: an alarm batch is always in flight.
    upstream.set_default(Reply::Slow {
        status: 200,
        delay: Duration::from_millis(100),
    });
    let mut o = options(&upstream.url());
    o.max_in_flight = 16;
    o.linger = Duration::ZERO;
    o.batch_max_records = 5;
    // Alarms first, and more behind them whenever one is sent.
    append(&tb.buffer, (0..3).map(alarm).collect()).await;
    let readings = append(&tb.buffer, (0..50).map(reading).collect()).await;
    let (handle, driver) = Forwarder::new(tb.buffer.clone(), o).unwrap();
    let fwd = Running::spawn(handle.clone(), driver);

    let delivered = |u: &Upstream| u.delivered_seqs("readings").len();
    let deadline = Instant::now() + WAIT;
    let mut i = 3;
    while delivered(&upstream) < readings.len() {
        assert!(
            Instant::now() < deadline,
            "{} of {} readings delivered while alarms kept coming",
            delivered(&upstream),
            readings.len()
        );
        append(&tb.buffer, vec![alarm(i)]).await;
        i += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!upstream.delivered_seqs("alarms").is_empty());
    fwd.stop().await;
    tb.close().await;
}
