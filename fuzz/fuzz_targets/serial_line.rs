//! Framing plus line decoding never panics on any byte stream, and lines stay within the limit.
#![no_main]

use gateway::decode::SerialDecoder;
use gateway::framing::{Frame, LineFramer};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut framer = LineFramer::new(64);
    let decoder = SerialDecoder::new("uart-0");
    // Feed in uneven chunks, as a port delivers them.
    for chunk in data.chunks(7) {
        for frame in framer.push(chunk) {
            if let Frame::Line(line) = frame {
                assert!(line.len() <= 64);
                if let Ok(readings) = decoder.decode(&line, 0) {
                    assert!(readings.iter().all(|r| r.value.is_finite()));
                }
            }
        }
    }
    let _ = framer.finish();
});
