//! Framing plus line decoding never panics on any byte stream, lines stay within the limit, and
//! every reading passes the `[ingest]` rules of WIRE.md §1.
#![no_main]

use gateway::sources::decode::{IdKind, IngestRules, SerialDecoder};
use gateway::sources::framing::{Frame, LineFramer};
use libfuzzer_sys::fuzz_target;

const NOW: i64 = 1_764_081_600_000;

fuzz_target!(|data: &[u8]| {
    let mut framer = LineFramer::new(64);
    let rules = IngestRules::default();
    let decoder = SerialDecoder::new("uart-0").with_rules(rules);
    // Feed in uneven chunks, as a port delivers them.
    for chunk in data.chunks(7) {
        for frame in framer.push(chunk) {
            if let Frame::Line(line) = frame {
                assert!(line.len() <= 64);
                if let Ok(readings) = decoder.decode(&line, NOW) {
                    for r in readings {
                        assert!(r.value.is_finite());
                        assert!(rules.check_id(IdKind::Device, &r.device).is_ok(), "{r:?}");
                        assert!(rules.check_id(IdKind::Metric, &r.metric).is_ok(), "{r:?}");
                        assert!(r.ts_ms <= NOW + 300_000, "{r:?}");
                    }
                }
            }
        }
    }
    let _ = framer.finish();
});
