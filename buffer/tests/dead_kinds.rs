//! Rejected input and refused batches have separate dead-letter quotas: a flood of one never
//! evicts the other.

mod common;

use common::{Running, opts, reading};
use gateway_buffer::{DeadLetter, DeadLetterInput, DeadPayload, Lane, Stored};

fn junk(i: usize) -> DeadLetterInput {
    DeadLetterInput {
        reason: "bad_json".into(),
        origin: "sensors/junk/temperature".into(),
        detail: format!("junk {i}"),
        payload: DeadPayload::Raw(vec![b'#'; 200]),
    }
}

fn refused(first_seq: u64) -> DeadLetterInput {
    DeadLetterInput {
        reason: "upstream_rejected".into(),
        origin: "upstream".into(),
        detail: "HTTP 400: no".into(),
        payload: DeadPayload::Records {
            lane: Lane::Readings,
            records: (first_seq..first_seq + 5)
                .map(|seq| Stored {
                    seq,
                    record: reading(seq),
                })
                .collect(),
        },
    }
}

#[tokio::test]
async fn a_flood_of_rejected_input_never_evicts_a_refused_batch_and_each_kind_is_counted() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = opts(dir.path());
    o.dead_letter_max_bytes = 2_000;
    o.refused_dead_letter_max_bytes = 4_000;
    let r = Running::open(o.clone());
    let dl = r.buffer.dead_letters();
    let kept = dl.put(refused(10)).unwrap();
    let junk_ids: Vec<u64> = (0..100).map(|i| dl.put(junk(i)).unwrap()).collect();
    let s = r.buffer.stats().dead_letters;
    assert!(s.input.bytes <= 2_000, "{s:?}");
    assert_eq!(s.input.count + s.input.dropped, 100);
    assert!(s.input.dropped > 0);
    assert_eq!((s.refused.count, s.refused.dropped), (1, 0));
    assert_eq!(s.count, s.input.count + s.refused.count);
    assert_eq!(s.dropped, s.input.dropped);
    // Listed with the junk, in id order, and replayable.
    let all = dl.list(usize::MAX, None).unwrap();
    assert_eq!(all[0].id, kept);
    assert!(all.windows(2).all(|w| w[0].id < w[1].id));
    assert_eq!(all.last().unwrap().id, *junk_ids.last().unwrap());
    assert_eq!(dl.list(2, Some(kept)).unwrap()[0].reason, "bad_json");
    assert_eq!(dl.count(), s.count);
    // Refused batches evict only their own kind, oldest first.
    let more: Vec<u64> = (0..20)
        .map(|k| dl.put(refused(100 + k * 10)).unwrap())
        .collect();
    let s = r.buffer.stats().dead_letters;
    assert!(s.refused.dropped > 0 && s.refused.bytes <= 4_000, "{s:?}");
    assert_eq!(
        dl.get(kept).unwrap(),
        None,
        "the oldest refused batch went first"
    );
    assert!(dl.get(*more.last().unwrap()).unwrap().is_some());
    let junk_before = s.input.count;
    assert_eq!(r.buffer.stats().dead_letters.input.count, junk_before);
    // Take (replay) works across both kinds.
    let letter = dl.take(*more.last().unwrap()).unwrap().unwrap();
    let DeadPayload::Records { records, .. } = letter.payload else {
        panic!("a refused batch");
    };
    r.buffer
        .requeue("forwarder", Lane::Readings, records)
        .unwrap();
    assert_eq!(r.buffer.stats().readings.requeued, 5);
    drop(dl);
    r.close().await;

    // Counts come back per kind after a reopen.
    let r = Running::open(o);
    let again = r.buffer.stats().dead_letters;
    assert_eq!(again.input.count, s.input.count);
    assert_eq!(again.refused.count, s.refused.count - 1);
    r.close().await;
}

#[tokio::test]
async fn a_database_from_before_the_split_keeps_its_refused_batches_under_their_own_quota() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = opts(dir.path());
    o.dead_letter_max_bytes = 2_000;
    let r = Running::open(o.clone());
    let dl = r.buffer.dead_letters();
    let id = dl.put(refused(10)).unwrap();
    dl.put(junk(0)).unwrap();
    drop(dl);
    r.close().await;

    // Rewrite the database as the older version left it: every letter in "dead", no flag.
    {
        let db = common::open_raw_sled(dir.path());
        let dead = db.open_tree("dead").unwrap();
        let refused_tree = db.open_tree("dead.refused").unwrap();
        let v = refused_tree.remove(id.to_be_bytes()).unwrap().unwrap();
        dead.insert(id.to_be_bytes(), v).unwrap();
        db.open_tree("meta").unwrap().remove("dead_split").unwrap();
        db.flush().unwrap();
    }

    let r = Running::open(o);
    let s = r.buffer.stats().dead_letters;
    assert_eq!((s.input.count, s.refused.count), (1, 1), "{s:?}");
    // A flood of junk now leaves it alone.
    let dl = r.buffer.dead_letters();
    for i in 0..50 {
        dl.put(junk(i)).unwrap();
    }
    let letter: DeadLetter = dl.get(id).unwrap().expect("still there");
    assert_eq!(letter.reason, "upstream_rejected");
    drop(dl);
    r.close().await;
}
