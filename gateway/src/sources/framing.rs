//! Line framing for serial ports: bytes in, whole lines (or why a line was dropped) out.
//!
//! A pure state machine, so noise, overlong lines and cut-off lines are tested without a port.
//! Lines end in `\n`; a trailing `\r` is stripped. A line longer than the limit is reported once
//! and everything up to the next `\n` is skipped: reading resynchronises on the next line.

use crate::sources::decode::Reject;

/// What one call to [`LineFramer::push`] produced, in order.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    /// A complete line without its terminator.
    Line(Vec<u8>),
    /// A line that was dropped before decoding.
    Dropped(Reject),
}

/// Splits a byte stream into lines of at most `max_line_bytes`.
#[derive(Debug)]
pub struct LineFramer {
    max_line_bytes: usize,
    buf: Vec<u8>,
    /// Inside an overlong line: skip until the next `\n`.
    skipping: bool,
}

impl LineFramer {
    pub fn new(max_line_bytes: usize) -> LineFramer {
        LineFramer {
            max_line_bytes,
            buf: Vec::with_capacity(max_line_bytes.min(4096)),
            skipping: false,
        }
    }

    /// Feeds bytes read from the port; returns the frames they complete.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<Frame> {
        let mut out = Vec::new();
        for chunk in bytes.split_inclusive(|&b| b == b'\n') {
            let (body, ends_line) = match chunk.split_last() {
                Some((b'\n', body)) => (body, true),
                _ => (chunk, false),
            };
            if !self.skipping {
                if self.buf.len() + body.len() > self.max_line_bytes + 1 {
                    // +1 leaves room for a '\r' that the terminator strips.
                    self.buf.clear();
                    self.skipping = true;
                    out.push(Frame::Dropped(Reject::LineTooLong));
                } else {
                    self.buf.extend_from_slice(body);
                }
            }
            if ends_line {
                if !self.skipping {
                    let mut line = std::mem::take(&mut self.buf);
                    if line.last() == Some(&b'\r') {
                        line.pop();
                    }
                    if line.len() > self.max_line_bytes {
                        out.push(Frame::Dropped(Reject::LineTooLong));
                    } else if !line.is_empty() {
                        out.push(Frame::Line(line));
                    }
                }
                self.skipping = false;
            }
        }
        out
    }

    /// The port closed: a line still being assembled is cut short.
    pub fn finish(&mut self) -> Option<Reject> {
        let partial = !self.buf.is_empty() && !self.skipping;
        self.buf.clear();
        self.skipping = false;
        partial.then_some(Reject::PartialLine)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(frames: Vec<Frame>) -> Vec<String> {
        frames
            .into_iter()
            .map(|f| match f {
                Frame::Line(l) => String::from_utf8(l).unwrap(),
                Frame::Dropped(r) => format!("<{}>", r.reason()),
            })
            .collect()
    }

    #[test]
    fn lines_split_across_reads_are_joined_and_crlf_is_stripped() {
        let mut f = LineFramer::new(64);
        assert!(f.push(b"dev-3,temp").is_empty());
        assert_eq!(
            lines(f.push(b"erature,21.5\r\nx,y,1\n")),
            ["dev-3,temperature,21.5", "x,y,1"]
        );
    }

    #[test]
    fn an_overlong_line_is_reported_once_and_the_next_line_is_read() {
        let mut f = LineFramer::new(8);
        let mut out = f.push(b"0123456789");
        out.extend(f.push(b"abcdef\nok,1,2\n"));
        assert_eq!(lines(out), ["<line_too_long>", "ok,1,2"]);
    }

    #[test]
    fn a_line_of_exactly_the_limit_passes_with_or_without_cr() {
        let mut f = LineFramer::new(4);
        assert_eq!(
            lines(f.push(b"abcd\nabcd\r\nabcde\n")),
            ["abcd", "abcd", "<line_too_long>"]
        );
    }

    #[test]
    fn a_cut_off_line_is_reported_when_the_port_closes() {
        let mut f = LineFramer::new(64);
        f.push(b"a,b,1\ndev-3,hum");
        assert_eq!(f.finish(), Some(Reject::PartialLine));
        assert_eq!(f.finish(), None);
        assert_eq!(lines(f.push(b"a,b,2\n")), ["a,b,2"]);
    }

    #[test]
    fn blank_lines_are_skipped() {
        let mut f = LineFramer::new(64);
        assert_eq!(lines(f.push(b"\n\r\n\na,b,1\n")), ["a,b,1"]);
    }
}
