//! Upstream faults under a device-sim fleet: the cloud down (connection refused) and back, a
//! storm of 5xx, 429 with `Retry-After`, a poison batch answered 400, slow answers, and a request
//! that hangs past the forwarder's timeout.
//!
//! Each test compares the cloud's records with device-sim's own account of the run (every
//! reading sent, and the broker's acknowledgements per device and metric; see
//! [`gateway_tests::fleet`]): every acknowledged reading arrives with the value sent, in
//! per-device order, and nothing else does — except the poison batch, whose readings are
//! accounted for exactly in the dead letters instead.

use device_sim::{Broker, FleetConfig, MqttForm, run_fleet};
use gateway_tests::fleet::SentLog;
use gateway_tests::workload::{self, BASE_TS_MS, check_seq_stable};
use gateway_tests::{
    Batch, BrokerChoice, GatewayProcess, GatewaySpec, Poison, Reply, Upstream, wait_until,
};
use std::time::{Duration, Instant};

/// A broker, a gateway and the faulty cloud it sends to.
struct Rig {
    test: &'static str,
    broker: BrokerChoice,
    up: Upstream,
    gw: GatewayProcess,
}

impl Rig {
    /// Starts the gateway (with `upstream_extra` in `[upstream]`) against `up` and proves the MQTT
    /// path; if `up` is up, waits until the probe reading was delivered, so the faults set next
    /// meet the fleet's readings.
    async fn start(test: &'static str, up: Upstream, upstream_extra: &str) -> Rig {
        let broker = BrokerChoice::for_test(test);
        let mut spec = GatewaySpec::new(broker.mqtt_setup(), &up.url());
        spec.gateway_id = format!("gw-{test}");
        spec.upstream_extra = upstream_extra.to_owned();
        let mut gw = GatewayProcess::start(&spec);
        gw.wait_ready().await;
        gw.wait_mqtt_ingest(broker.port()).await;
        if up.is_up() {
            wait_until(
                "the probe reading upstream",
                Duration::from_secs(60),
                || {
                    let n = up.delivered_count("readings");
                    async move { (n > 0).then_some(()) }
                },
            )
            .await;
        }
        Rig {
            test,
            broker,
            up,
            gw,
        }
    }

    /// A device-sim fleet of `devices` devices sending `ticks` reading sets at `rate_hz`.
    fn fleet(&self, devices: u32, rate_hz: f64, ticks: u64, form: MqttForm) -> FleetConfig {
        let broker: Broker = format!("127.0.0.1:{}", self.broker.port()).parse().unwrap();
        let mut cfg = FleetConfig::new(broker);
        cfg.devices = devices;
        cfg.rate_hz = rate_hz;
        cfg.count = Some(ticks);
        cfg.form = form;
        cfg.seed = 7;
        cfg.start_ts_ms = Some(BASE_TS_MS);
        cfg.record_sent = true;
        cfg.client_id_prefix = format!("{}-{}-", self.test, std::process::id());
        cfg
    }

    /// Runs a fleet to the end and checks the broker acknowledged all of it.
    async fn send(&self, cfg: FleetConfig) -> SentLog {
        let log = SentLog::from_report(run_fleet(cfg, std::future::pending()).await.unwrap());
        log.check_all_acked().unwrap();
        log
    }

    fn delivered(&self) -> Vec<workload::UpReading> {
        workload::parse_readings(&self.up.delivered_records("readings"))
    }

    /// Waits until every reading of `log` has arrived (`timeout`), then a barrier; returns the
    /// final comparison, which must be clean.
    async fn expect_all_delivered(
        &mut self,
        log: &SentLog,
        timeout: Duration,
    ) -> gateway_tests::fleet::Delivery {
        let deadline = Instant::now() + timeout;
        loop {
            let d = log.check(&self.delivered());
            if d.missing.is_empty() {
                break;
            }
            if Instant::now() >= deadline {
                let status = self.gw.try_status().await.unwrap_or_default();
                panic!(
                    "{}: acknowledged readings not delivered within {timeout:?}: {}\n\
                     upstream: {}\n{}",
                    self.test,
                    d.describe(),
                    status["upstream"],
                    self.gw.stderr_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.gw.barrier(self.broker.port(), &self.up).await;
        let d = log.check(&self.delivered());
        assert!(d.is_clean(), "{}: {}", self.test, d.describe());
        check_seq_stable(&self.up.batches()).unwrap();
        assert!(self.up.errors().is_empty(), "{:?}", self.up.errors());
        d
    }
}

fn seq_range(b: &Batch) -> (u64, u64) {
    let s = b.seqs();
    (s[0], *s.last().unwrap())
}

/// Every batch answered `status` was sent again, with the same seqs and key, and delivered.
fn assert_resent_and_delivered(batches: &[Batch], status: u16) -> usize {
    let failed: Vec<&Batch> = batches.iter().filter(|b| b.status == status).collect();
    for f in &failed {
        let delivered_later = batches.iter().any(|b| {
            b.index > f.index
                && b.delivered()
                && b.idempotency_key == f.idempotency_key
                && b.records == f.records
        });
        assert!(
            delivered_later,
            "batch {} {:?} answered {status} was never delivered again unchanged",
            f.index, f.idempotency_key
        );
    }
    failed.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readings_sent_while_the_cloud_refuses_connections_arrive_once_it_is_back() {
    let test = "fault-upstream-down";
    let started = Instant::now();
    let mut rig = Rig::start(test, Upstream::start_down().await, "").await;
    let log = rig.send(rig.fleet(3, 25.0, 50, MqttForm::Json)).await;
    rig.gw
        .wait_status(
            "the forwarder to see the cloud down",
            Duration::from_secs(30),
            |s| {
                let up = &s["upstream"];
                (up["failed_retryable"].as_u64()? >= 3 && up["state"] != "ok").then_some(())
            },
        )
        .await;
    assert_eq!(
        rig.up.batches().len(),
        0,
        "nothing reached a cloud that was down"
    );
    rig.up.come_up().await;
    let d = rig
        .expect_all_delivered(&log, Duration::from_secs(60))
        .await;
    let status = rig
        .gw
        .wait_status("upstream state ok again", Duration::from_secs(30), |s| {
            (s["upstream"]["state"] == "ok").then(|| s.clone())
        })
        .await;
    eprintln!(
        "{test}: {} readings sent while down, all delivered after it came back; {} duplicates; \
         failed_retryable {}; {:.1} s",
        log.len(),
        d.duplicates,
        status["upstream"]["failed_retryable"],
        started.elapsed().as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_of_5xx_answers_delays_delivery_but_loses_nothing() {
    let test = "fault-upstream-5xx";
    let started = Instant::now();
    let mut rig = Rig::start(test, Upstream::start().await, "batch_max_records = 100\n").await;
    let storm: Vec<Reply> = (0..24)
        .map(|i| Reply::Status([500, 502, 503, 504][i % 4]))
        .collect();
    rig.up.push_replies(storm);
    let log = rig.send(rig.fleet(3, 25.0, 50, MqttForm::Multi)).await;
    let d = rig
        .expect_all_delivered(&log, Duration::from_secs(90))
        .await;
    let batches = rig.up.batches();
    let failed: usize = [500, 502, 503, 504]
        .into_iter()
        .map(|s| assert_resent_and_delivered(&batches, s))
        .sum();
    assert_eq!(failed, 24, "every scripted 5xx was answered");
    let status = rig.gw.status().await;
    assert_eq!(status["upstream"]["failed_permanent"], 0, "{status:#}");
    assert!(
        status["upstream"]["failed_retryable"].as_u64() >= Some(24),
        "{status:#}"
    );
    assert_eq!(status["buffer"]["dead_letters"]["count"], 0, "{status:#}");
    eprintln!(
        "{test}: {} readings through 24 5xx answers, all delivered, {} duplicates; {:.1} s",
        log.len(),
        d.duplicates,
        started.elapsed().as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_with_retry_after_is_waited_out_and_loses_nothing() {
    let test = "fault-upstream-429";
    let started = Instant::now();
    let mut rig = Rig::start(test, Upstream::start().await, "").await;
    // retry_max_ms is 500 in these tests, so only Retry-After explains a 2 s pause.
    rig.up.push_replies([Reply::RetryAfter {
        status: 429,
        secs: 2,
    }]);
    let log = rig.send(rig.fleet(2, 25.0, 40, MqttForm::Json)).await;
    let d = rig
        .expect_all_delivered(&log, Duration::from_secs(60))
        .await;
    let batches = rig.up.batches();
    let refused = batches
        .iter()
        .find(|b| b.status == 429)
        .expect("the 429 was answered");
    let next = batches
        .iter()
        .find(|b| b.index == refused.index + 1)
        .expect("a request after the 429");
    let waited = next.arrived - refused.arrived;
    assert!(
        waited >= Duration::from_millis(1_950),
        "the next request came {waited:?} after a 429 with Retry-After: 2"
    );
    assert_resent_and_delivered(&batches, 429);
    eprintln!(
        "{test}: next request {:.2} s after a 429 with Retry-After: 2; {} readings delivered, {} \
         duplicates; {:.1} s",
        waited.as_secs_f64(),
        log.len(),
        d.duplicates,
        started.elapsed().as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_batch_goes_to_the_dead_letters_exactly_and_delivery_resumes_after_it() {
    let test = "fault-upstream-poison";
    let started = Instant::now();
    let mut rig = Rig::start(test, Upstream::start().await, "batch_max_records = 40\n").await;
    // Batch 0 was the probe; refuse the third readings batch of the fleet, and any re-send.
    rig.up.set_poison(Poison {
        nth: 3,
        status: 400,
    });
    let log = rig.send(rig.fleet(3, 25.0, 50, MqttForm::Json)).await;
    rig.gw.barrier(rig.broker.port(), &rig.up).await;

    let batches = rig.up.batches();
    let poisoned: Vec<&Batch> = batches.iter().filter(|b| b.status == 400).collect();
    assert_eq!(
        poisoned.len(),
        1,
        "the poison batch was sent once and not retried: {:?}",
        poisoned
            .iter()
            .map(|b| &b.idempotency_key)
            .collect::<Vec<_>>()
    );
    let poison = poisoned[0];
    let (first, last) = seq_range(poison);
    // Every other reading arrived; the missing ones are exactly the poison batch's.
    let d = log.check(&rig.delivered());
    assert!(
        d.unexpected.is_empty() && d.out_of_order.is_empty(),
        "{}",
        d.describe()
    );
    let poison_readings = workload::parse_readings(&poison.records);
    let mut poison_keys: Vec<String> = poison_readings
        .iter()
        .map(|r| {
            format!(
                "{}/{} ts {:?} value {}",
                r.device,
                r.metric,
                Some(r.ts),
                r.value
            )
        })
        .collect();
    let mut missing = d.missing.clone();
    poison_keys.sort();
    missing.sort();
    assert_eq!(
        missing, poison_keys,
        "the readings not delivered are exactly the poison batch's"
    );
    // Delivery resumed after it.
    let after = batches
        .iter()
        .filter(|b| b.index > poison.index && b.delivered() && b.lane == "readings")
        .count();
    assert!(after > 0, "no batch was delivered after the poison batch");
    let status = rig.gw.status().await;
    assert_eq!(status["upstream"]["failed_permanent"], 1, "{status:#}");
    assert_eq!(status["buffer"]["dead_letters"]["count"], 1, "{status:#}");

    // The dead letter holds exactly that batch.
    rig.gw.stop().await;
    let config = rig.gw.config_path().display().to_string();
    let out = rig
        .gw
        .run_cli(&["dead-letters", "list", "--config", &config]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "dead-letters list failed: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = text.lines().collect();
    let want = format!(
        "{} readings records, seq {first}-{last}",
        poison.records.len()
    );
    assert_eq!(lines.len(), 1, "one dead letter: {text}");
    assert!(lines[0].contains(&want), "want {want:?} in {text}");
    eprintln!(
        "{test}: {} readings sent; poison batch seq {first}-{last} ({} readings) dead-lettered, \
         the other {} delivered, {} batches after it; {:.1} s",
        log.len(),
        poison.records.len(),
        d.arrived,
        after,
        started.elapsed().as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_answers_within_the_timeout_deliver_everything_once() {
    let test = "fault-upstream-slow";
    let started = Instant::now();
    let mut rig = Rig::start(test, Upstream::start().await, "").await;
    // timeout_ms is 5000 in these tests: a 1 s answer leaves room for a busy machine.
    rig.up.set_default(Reply::Slow {
        status: 200,
        delay: Duration::from_millis(1_000),
    });
    let log = rig.send(rig.fleet(3, 25.0, 50, MqttForm::Senml)).await;
    let d = rig
        .expect_all_delivered(&log, Duration::from_secs(90))
        .await;
    assert_eq!(
        d.duplicates,
        0,
        "a slow 200 is not a failure: {}",
        d.describe()
    );
    let status = rig.gw.status().await;
    assert_eq!(status["upstream"]["retries"], 0, "{status:#}");
    eprintln!(
        "{test}: {} readings in {} batches answered after 1 s, all delivered once; {:.1} s",
        log.len(),
        rig.up.batches().len(),
        started.elapsed().as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_hangs_past_the_timeout_is_sent_again_and_nothing_is_lost() {
    let test = "fault-upstream-hang";
    let started = Instant::now();
    let mut rig = Rig::start(test, Upstream::start().await, "").await;
    rig.up.push_replies([Reply::Hang]);
    let log = rig.send(rig.fleet(2, 25.0, 40, MqttForm::Json)).await;
    let d = rig
        .expect_all_delivered(&log, Duration::from_secs(90))
        .await;
    let batches = rig.up.batches();
    let hung = batches
        .iter()
        .find(|b| b.status == 0)
        .expect("the hung request");
    let again = batches
        .iter()
        .find(|b| b.index > hung.index && b.idempotency_key == hung.idempotency_key)
        .expect("the hung batch was sent again");
    assert!(again.delivered() && again.records == hung.records);
    let waited = again.arrived - hung.arrived;
    assert!(
        waited >= Duration::from_millis(4_900),
        "re-sent {waited:?} after a hang; the timeout is 5 s"
    );
    let status = rig.gw.status().await;
    assert!(
        status["upstream"]["failed_retryable"].as_u64() >= Some(1),
        "{status:#}"
    );
    assert!(
        status["upstream"]["timeouts"].as_u64() >= Some(1),
        "the hang is counted as a timeout: {status:#}"
    );
    eprintln!(
        "{test}: a request hung, re-sent {:.1} s later; {} readings delivered, {} duplicates; \
         {:.1} s",
        waited.as_secs_f64(),
        log.len(),
        d.duplicates,
        started.elapsed().as_secs_f64()
    );
}
