//! Randomized SIGKILL trials: the real `device-sim` binary publishes QoS 1 readings to mosquitto
//! while the gateway is SIGKILLed at random moments (mid-stream, and sometimes again while it is
//! still starting up) and restarted on the same data dir.
//!
//! After each trial the cloud's records are checked against device-sim's own account of the run
//! (`--summary-json`, `--record-sent`; see [`gateway_tests::fleet`]):
//!
//! - the broker acknowledged every reading device-sim sent (mosquitto stays up, so this is a
//!   precondition, not a gateway property), so every reading in the record file must arrive;
//! - every one of them arrives upstream at least once, with the value sent;
//! - per device, first deliveries (lowest `seq` of a reading) follow device-sim's send order;
//! - nothing arrives that was not sent, and a `seq` delivered twice always carries the same
//!   record;
//! - duplicates are counted and printed (allowed: at-least-once).
//!
//! `FAULT_TRIALS` (default 10; 50 for the long run) sets the trials, `FAULT_SEED` replays the
//! random choices of a run (printed at the start and in every failure).

use gateway_tests::fleet::{DeviceSimProcess, SplitMix, seed_from_env};
use gateway_tests::workload::{self, BASE_TS_MS, check_seq_stable};
use gateway_tests::{
    GatewayProcess, GatewaySpec, MqttSetup, Upstream, env_usize, require_mosquitto,
};
use std::time::{Duration, Instant};

/// What one trial does, drawn from its seed.
#[derive(Debug)]
struct Plan {
    devices: u64,
    first_device: u64,
    rate_hz: u64,
    ticks: u64,
    form: &'static str,
    /// Per kill: ms after the previous (re)start, ms down, and ms until a second kill while
    /// starting up (if any).
    kills: Vec<(u64, u64, Option<u64>)>,
}

impl Plan {
    fn draw(trial: usize, rng: &mut SplitMix) -> Plan {
        let devices = rng.range(2, 6);
        let rate_hz = rng.range(20, 60);
        let stream_ms = rng.range(2_000, 3_500);
        let ticks = rate_hz * stream_ms / 1000;
        // Forms that carry ts, so every reading is identifiable.
        let form = ["json", "multi", "senml"][rng.range(0, 2) as usize];
        let n_kills = rng.range(1, 2);
        let kills = (0..n_kills)
            .map(|_| {
                let after = rng.range(150, stream_ms * 7 / 10 / n_kills);
                let down = rng.range(0, 600);
                let again = rng.chance(0.3).then(|| rng.range(10, 400));
                (after, down, again)
            })
            .collect();
        Plan {
            devices,
            first_device: 1 + trial as u64 * 10,
            rate_hz,
            ticks,
            form,
            kills,
        }
    }
}

/// Prints how to replay the run if the test fails anywhere (also inside harness helpers).
struct ReplayHint(String);

impl Drop for ReplayHint {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("fault-sigkill failed: {}", self.0);
        }
    }
}

#[derive(Debug, Default)]
struct Totals {
    readings: usize,
    duplicates: usize,
    duplicate_seqs: usize,
    kills: usize,
    kills_mid_stream: usize,
    kills_while_starting: usize,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_moments_loses_no_acknowledged_reading_and_keeps_device_order() {
    let test = "fault-sigkill";
    let Some(broker) = require_mosquitto(test) else {
        return;
    };
    let started = Instant::now();
    let trials = env_usize("FAULT_TRIALS", 10);
    let seed = seed_from_env("FAULT_SEED");
    let replay = format!("replay with FAULT_SEED={seed} FAULT_TRIALS={trials}");
    let _hint = ReplayHint(replay.clone());
    let receiver = Upstream::start().await;
    let spec = GatewaySpec::new(
        MqttSetup::External {
            port: broker.port(),
        },
        &receiver.url(),
    );
    let mut gw = GatewayProcess::start(&spec);
    gw.wait_ready().await;
    gw.wait_mqtt_ingest(broker.port()).await;

    let mut totals = Totals::default();
    for trial in 0..trials {
        let trial_started = Instant::now();
        let mut rng = SplitMix::new(seed ^ (trial as u64).wrapping_mul(0x2545_F491_4F6C_DD1D));
        let plan = Plan::draw(trial, &mut rng);
        let sim = DeviceSimProcess::start_mqtt(
            broker.port(),
            &[
                format!("--devices={}", plan.devices),
                format!("--first-device={}", plan.first_device),
                format!("--rate-hz={}", plan.rate_hz),
                format!("--count={}", plan.ticks),
                format!("--form={}", plan.form),
                format!("--seed={}", rng.next_u64() >> 1),
                format!("--start-ts-ms={}", BASE_TS_MS + trial as i64 * 100_000_000),
            ],
        );
        let mut sim = sim;
        let (mut mid_stream, mut while_starting) = (0, 0);
        for &(after, down, again) in &plan.kills {
            tokio::time::sleep(Duration::from_millis(after)).await;
            if sim.is_running() {
                mid_stream += 1;
            }
            gw.sigkill();
            tokio::time::sleep(Duration::from_millis(down)).await;
            gw.spawn();
            if let Some(ms) = again {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                gw.sigkill();
                while_starting += 1;
                gw.spawn();
            }
            gw.wait_ready().await;
        }
        // The broker is never stopped here; if it vanishes, say so rather than blame device-sim.
        let deadline = Instant::now() + Duration::from_secs(120);
        while sim.is_running() && Instant::now() < deadline {
            if std::net::TcpStream::connect(("127.0.0.1", broker.port())).is_err() {
                panic!(
                    "trial {trial}: mosquitto stopped accepting connections while device-sim was \
                     publishing (this test never stops it)\n{}",
                    broker.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let log = sim.finish(Duration::from_secs(10)).await;
        let streamed = trial_started.elapsed();
        if let Err(e) = log.check_all_acked() {
            panic!("trial {trial}: mosquitto did not acknowledge everything: {e}\n{replay}");
        }
        // Wait for every reading, then let any late duplicates land behind a barrier.
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let got = workload::parse_readings(&receiver.delivered_records("readings"));
            if log.check(&got).missing.is_empty() {
                break;
            }
            if Instant::now() >= deadline {
                let d = log.check(&got);
                panic!(
                    "trial {trial} ({plan:?}): acknowledged readings lost: {}\n{replay}\n{}",
                    d.describe(),
                    gw.stderr_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let caught_up = trial_started.elapsed();
        gw.barrier(broker.port(), &receiver).await;
        let d = log.check(&workload::parse_readings(
            &receiver.delivered_records("readings"),
        ));
        assert!(
            d.is_clean(),
            "trial {trial} ({plan:?}): {}\n{replay}",
            d.describe()
        );
        if let Err(e) = check_seq_stable(&receiver.batches()) {
            panic!("trial {trial}: {e}\n{replay}");
        }
        eprintln!(
            "{test}: trial {trial}: {} devices, {} form, {} readings; {} kills ({mid_stream} mid-stream, \
             {while_starting} while starting); all arrived, {} duplicates ({} same seq); \
             stream {:.1} s, all delivered at {:.1} s, barrier at {:.1} s",
            plan.devices,
            plan.form,
            log.len(),
            plan.kills.len() + while_starting,
            d.duplicates,
            d.duplicate_seqs,
            streamed.as_secs_f64(),
            caught_up.as_secs_f64(),
            trial_started.elapsed().as_secs_f64()
        );
        totals.readings += log.len();
        totals.duplicates += d.duplicates;
        totals.duplicate_seqs += d.duplicate_seqs;
        totals.kills += plan.kills.len() + while_starting;
        totals.kills_mid_stream += mid_stream;
        totals.kills_while_starting += while_starting;
    }
    assert!(receiver.errors().is_empty(), "{:?}", receiver.errors());
    assert!(
        totals.kills_mid_stream > 0,
        "no kill landed while device-sim was publishing; the trials prove nothing\n{replay}"
    );
    eprintln!(
        "{test}: {trials} trials (FAULT_SEED={seed}): {} acknowledged readings, 0 lost, {} \
         duplicates ({} same seq re-sent, {} stored again); {} SIGKILLs ({} mid-stream, {} while \
         starting); {:.1} s",
        totals.readings,
        totals.duplicates,
        totals.duplicate_seqs,
        totals.duplicates - totals.duplicate_seqs,
        totals.kills,
        totals.kills_mid_stream,
        totals.kills_while_starting,
        started.elapsed().as_secs_f64()
    );
}
