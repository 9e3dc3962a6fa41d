//! Model test: random append / sync / read / ack / reopen / abort sequences against a
//! `VecDeque` per lane.
//!
//! The abort step stops the committer without a clean shutdown, in this process: it tests that
//! the buffer's own state (cursors, acks, seqs) recovers, not durability, since sled writes its
//! caches out when the dropped database closes. The same model across real power cuts, where
//! whatever was not fsynced is gone, is `tests/powercut/tests/buffer_model.rs`.

mod common;

use std::collections::VecDeque;

use common::{Running, alarm, opts, read_all, reading};
use gateway_buffer::{Lane, Record};
use proptest::prelude::*;

const C: &str = "forwarder";

#[derive(Clone, Debug)]
enum Op {
    /// Append records; `true` = alarm.
    Append(Vec<bool>),
    /// `Buffer::flush`.
    Sync,
    /// Read up to n records from the consumer's cursor.
    Read(Lane, usize),
    /// Ack the first n un-acked records of the lane.
    Ack(Lane, usize),
    /// Clean shutdown and reopen.
    Reopen,
    /// Abort the committer and drop the handles without a clean shutdown, then reopen.
    Abort,
}

fn lane() -> impl Strategy<Value = Lane> {
    prop_oneof![Just(Lane::Alarms), Just(Lane::Readings)]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => prop::collection::vec(prop::bool::weighted(0.2), 1..40).prop_map(Op::Append),
        1 => Just(Op::Sync),
        3 => (lane(), 1usize..50).prop_map(|(l, n)| Op::Read(l, n)),
        3 => (lane(), 1usize..60).prop_map(|(l, n)| Op::Ack(l, n)),
        1 => Just(Op::Reopen),
        1 => Just(Op::Abort),
    ]
}

struct Model {
    lanes: [VecDeque<(u64, Record)>; 2],
    last_acked: [Option<u64>; 2],
    max_seq: u64,
    counter: u64,
}

fn idx(l: Lane) -> usize {
    match l {
        Lane::Alarms => 0,
        Lane::Readings => 1,
    }
}

async fn run(ops: Vec<Op>) {
    let dir = tempfile::tempdir().unwrap();
    let mut o = opts(dir.path());
    // Tiny blocks so reads, acks and reopens cross block boundaries often.
    o.cache_capacity_bytes = 256 * 1024;
    let mut r = Running::open(o.clone());
    let mut m = Model {
        lanes: [VecDeque::new(), VecDeque::new()],
        last_acked: [None, None],
        max_seq: 0,
        counter: 0,
    };
    for op in ops {
        match op {
            Op::Append(kinds) => {
                let records: Vec<Record> = kinds
                    .iter()
                    .map(|&a| {
                        m.counter += 1;
                        if a {
                            alarm(m.counter)
                        } else {
                            reading(m.counter)
                        }
                    })
                    .collect();
                let seqs = r.buffer.append(records.clone()).await.unwrap();
                assert_eq!(seqs.len(), records.len());
                for (seq, rec) in seqs.into_iter().zip(records) {
                    assert!(
                        seq > m.max_seq,
                        "seq went backwards: {seq} after {}",
                        m.max_seq
                    );
                    m.max_seq = seq;
                    m.lanes[idx(rec.lane())].push_back((seq, rec));
                }
            }
            Op::Sync => r.buffer.flush().await.unwrap(),
            Op::Read(l, n) => {
                let got = r.buffer.read(C, l, None, n, usize::MAX).unwrap();
                let want: Vec<_> = m.lanes[idx(l)].iter().take(n).cloned().collect();
                let got: Vec<_> = got.into_iter().map(|s| (s.seq, s.record)).collect();
                assert_eq!(got, want);
            }
            Op::Ack(l, n) => {
                let q = &mut m.lanes[idx(l)];
                let n = n.min(q.len());
                if n > 0 {
                    let up_to = q[n - 1].0;
                    q.drain(..n);
                    r.buffer.ack(C, l, up_to).unwrap();
                    m.last_acked[idx(l)] = Some(up_to);
                    assert_eq!(r.buffer.acked(C, l), Some(up_to));
                }
            }
            Op::Reopen => {
                r.close().await;
                r = Running::open(o.clone());
                for l in Lane::ALL {
                    let got: Vec<_> = read_all(&r.buffer, C, l)
                        .into_iter()
                        .map(|s| (s.seq, s.record))
                        .collect();
                    assert_eq!(
                        got,
                        Vec::from(m.lanes[idx(l)].clone()),
                        "lane {l} after reopen"
                    );
                    assert_eq!(r.buffer.acked(C, l), m.last_acked[idx(l)]);
                    assert_eq!(
                        r.buffer.stats().lane(l).records,
                        m.lanes[idx(l)].len() as u64
                    );
                }
            }
            Op::Abort => {
                r.task.abort();
                let _ = r.task.await;
                drop(r.buffer);
                // A commit already handed to the blocking pool finishes on its own, as the
                // flush of a killed process may or may not have; wait for its lock.
                r = Running::open(o.clone());
                for l in Lane::ALL {
                    // Every appended record is durable; acks since the last flush may be lost,
                    // which brings back acked records (duplicates), never loses un-acked ones.
                    let got: Vec<_> = read_all(&r.buffer, C, l)
                        .into_iter()
                        .map(|s| (s.seq, s.record))
                        .collect();
                    let want = Vec::from(m.lanes[idx(l)].clone());
                    assert!(
                        got.ends_with(&want),
                        "lane {l}: un-acked records lost or reordered"
                    );
                    let extra = got.len() - want.len();
                    assert!(
                        got[..extra]
                            .iter()
                            .all(|(s, _)| Some(*s) <= m.last_acked[idx(l)])
                    );
                    if let Some(a) = m.last_acked[idx(l)] {
                        r.buffer.ack(C, l, a).unwrap();
                    }
                }
            }
        }
    }
    r.close().await;
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("BUFFER_MODEL_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(128),
        ..ProptestConfig::default()
    })]

    #[test]
    fn every_durable_unacked_record_survives_reopen_in_order_with_its_seq(
        ops in prop::collection::vec(op(), 1..40)
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(run(ops));
    }
}
