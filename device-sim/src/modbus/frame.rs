//! The Modbus frame layer, pure: CRC-16/MODBUS, the read requests (function codes 01–04) and
//! their answers, exception answers, RTU framing and TCP (MBAP) framing. No I/O; the server
//! loops in [`super::server`] move bytes in and out.
//!
//! ```text
//! PDU      function(1) data(0..=252)
//! RTU ADU  unit(1) PDU crc(2, low byte first)                      4..=256 bytes
//! TCP ADU  transaction(2) protocol=0(2) length(2) unit(1) PDU     length = 1 + PDU length
//! ```
//!
//! # Guarantees
//!
//! - Hostile bytes never panic and never grow memory without bound: [`RtuDecoder`] holds at most
//!   [`RtuDecoder::CAPACITY`] bytes, and [`decode_mbap`] looks at one header at a time.
//! - [`RtuDecoder`] resynchronises on garbage: bytes that cannot begin a frame are dropped and
//!   counted, and a frame found behind them is still served.
//!
//! # Not promised
//!
//! - RTU frames of function codes whose request length is not known here are only recognised
//!   at a pause on the line ([`RtuDecoder::next_frame`] with `idle`), as a real slave delimits
//!   frames by silence.

/// The longest RTU frame: unit, PDU of at most 253 bytes, CRC.
pub const MAX_RTU_ADU: usize = 256;
/// The longest PDU.
pub const MAX_PDU: usize = 253;
/// The shortest RTU frame: unit, function, CRC.
const MIN_RTU_ADU: usize = 4;
/// Bytes of the MBAP header, the unit id included.
pub const MBAP_HEADER: usize = 7;

/// Exception codes the simulator answers with on its own (faults may send any other).
pub mod exception {
    /// The function code is not supported.
    pub const ILLEGAL_FUNCTION: u8 = 0x01;
    /// The address range is outside the map.
    pub const ILLEGAL_DATA_ADDRESS: u8 = 0x02;
    /// The quantity is out of range, or the request is malformed.
    pub const ILLEGAL_DATA_VALUE: u8 = 0x03;
    /// TCP: the unit id is not served behind this "gateway".
    pub const GATEWAY_TARGET_FAILED: u8 = 0x0B;
}

/// CRC-16/MODBUS (reflected polynomial 0xA001, initial value 0xFFFF). On the wire the low byte
/// goes first.
pub fn crc16(data: &[u8]) -> u16 {
    let mut crc = 0xFFFFu16;
    for &b in data {
        crc ^= u16::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xA001
            } else {
                crc >> 1
            };
        }
    }
    crc
}

/// The four readable tables, by their function code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    /// Function 01, bits.
    Coils,
    /// Function 02, bits.
    DiscreteInputs,
    /// Function 03, registers.
    HoldingRegisters,
    /// Function 04, registers.
    InputRegisters,
}

impl Table {
    /// The function code that reads this table.
    pub fn function(self) -> u8 {
        match self {
            Table::Coils => 0x01,
            Table::DiscreteInputs => 0x02,
            Table::HoldingRegisters => 0x03,
            Table::InputRegisters => 0x04,
        }
    }

    /// Whether the table holds bits (01, 02) rather than registers (03, 04).
    pub fn is_bits(self) -> bool {
        matches!(self, Table::Coils | Table::DiscreteInputs)
    }

    /// The largest quantity one request may read: 2000 bits or 125 registers.
    pub fn max_quantity(self) -> u16 {
        if self.is_bits() { 2000 } else { 125 }
    }
}

/// A read request (functions 01–04).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadRequest {
    /// Which table.
    pub table: Table,
    /// First address.
    pub address: u16,
    /// Number of bits or registers, within `1..=table.max_quantity()`.
    pub quantity: u16,
}

/// An exception answer: the request's function code and the exception code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exception {
    /// Function code of the request (without the 0x80 flag).
    pub function: u8,
    /// Exception code.
    pub code: u8,
}

impl Exception {
    /// The exception PDU: `function | 0x80`, `code`.
    pub fn pdu(self) -> [u8; 2] {
        [self.function | 0x80, self.code]
    }
}

/// Read a request PDU the way a slave checks it: function code (exception 01), then quantity
/// and shape (03). The address range is checked against the map by the caller (02).
pub fn parse_request(pdu: &[u8]) -> Result<ReadRequest, Exception> {
    let function = pdu.first().copied().unwrap_or(0);
    let fail = |code| Exception {
        function: function & 0x7F,
        code,
    };
    let table = match function {
        0x01 => Table::Coils,
        0x02 => Table::DiscreteInputs,
        0x03 => Table::HoldingRegisters,
        0x04 => Table::InputRegisters,
        _ => return Err(fail(exception::ILLEGAL_FUNCTION)),
    };
    let [_, a_hi, a_lo, q_hi, q_lo] = *pdu else {
        return Err(fail(exception::ILLEGAL_DATA_VALUE));
    };
    let quantity = u16::from_be_bytes([q_hi, q_lo]);
    if !(1..=table.max_quantity()).contains(&quantity) {
        return Err(fail(exception::ILLEGAL_DATA_VALUE));
    }
    Ok(ReadRequest {
        table,
        address: u16::from_be_bytes([a_hi, a_lo]),
        quantity,
    })
}

/// The PDU of a read request (what a master sends).
pub fn request_pdu(req: ReadRequest) -> [u8; 5] {
    let [a_hi, a_lo] = req.address.to_be_bytes();
    let [q_hi, q_lo] = req.quantity.to_be_bytes();
    [req.table.function(), a_hi, a_lo, q_hi, q_lo]
}

/// The answer PDU to a register read: function, byte count, registers big endian.
pub fn registers_pdu(table: Table, registers: &[u16]) -> Vec<u8> {
    let mut pdu = Vec::with_capacity(2 + 2 * registers.len());
    pdu.push(table.function());
    // At most 125 registers (parse_request), so 250 bytes fit the count byte.
    pdu.push((2 * registers.len()) as u8);
    for r in registers {
        pdu.extend_from_slice(&r.to_be_bytes());
    }
    pdu
}

/// The answer PDU to a bit read: function, byte count, bits packed from the lowest bit of the
/// first byte, the unused high bits of the last byte zero.
pub fn bits_pdu(table: Table, bits: &[bool]) -> Vec<u8> {
    let bytes = bits.len().div_ceil(8);
    let mut pdu = Vec::with_capacity(2 + bytes);
    pdu.push(table.function());
    // At most 2000 bits (parse_request), so 250 bytes fit the count byte.
    pdu.push(bytes as u8);
    pdu.resize(2 + bytes, 0);
    for (i, _) in bits.iter().enumerate().filter(|(_, on)| **on) {
        pdu[2 + i / 8] |= 1 << (i % 8);
    }
    pdu
}

/// Append the RTU frame of `pdu` for `unit` to `out`; `bad_crc` sends the CRC inverted.
pub fn encode_rtu(unit: u8, pdu: &[u8], bad_crc: bool, out: &mut Vec<u8>) {
    let start = out.len();
    out.push(unit);
    out.extend_from_slice(pdu);
    let mut crc = crc16(&out[start..]);
    if bad_crc {
        crc = !crc;
    }
    out.extend_from_slice(&crc.to_le_bytes());
}

/// One frame taken off the line or a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Unit (slave) id.
    pub unit: u8,
    /// The PDU, function code first.
    pub pdu: Vec<u8>,
}

/// What the bytes from a position on say about a frame starting there.
enum Candidate {
    /// A whole frame of this many bytes with a good CRC.
    Whole(usize),
    /// Could still become a frame when more bytes arrive.
    Partial,
    /// Cannot be the start of a frame.
    NotAFrame,
}

/// The length of a request frame from its first bytes, for the function codes whose requests
/// have a known shape; `Ok(None)` when more bytes are needed to tell, `Err(())` when the
/// function code's request length is not known here.
fn request_len(bytes: &[u8]) -> Result<Option<usize>, ()> {
    let Some(&function) = bytes.get(1) else {
        return Ok(None);
    };
    let counted = |at: usize, fixed: usize| Ok(bytes.get(at).map(|&n| fixed + usize::from(n)));
    match function {
        0x07 | 0x0B | 0x0C | 0x11 => Ok(Some(4)),
        0x18 => Ok(Some(6)),
        0x01..=0x06 | 0x08 => Ok(Some(8)),
        0x16 => Ok(Some(10)),
        0x0F | 0x10 => counted(6, 9),
        0x17 => counted(10, 13),
        _ => Err(()),
    }
}

/// Decodes RTU request frames from a byte stream, resynchronising on garbage.
///
/// Frames are found by their shape. A second byte of 0 or 0x80 and above is not a request's
/// function code, so such a start is dropped at once. For the function codes whose request length is known (01–08,
/// 0B, 0C, 0F, 10, 11, 16, 17, 18) a frame is recognised as soon as its bytes are in and its CRC
/// matches, wherever it starts; for other codes, at a pause on the line, when the bytes since the
/// last frame carry a good CRC as a whole. Bytes that cannot begin a frame are dropped and
/// counted in [`RtuDecoder::discarded`].
#[derive(Debug, Default)]
pub struct RtuDecoder {
    buf: Vec<u8>,
    discarded: u64,
}

impl RtuDecoder {
    /// Bytes held at most: one frame still arriving plus one read of the line.
    pub const CAPACITY: usize = 2 * MAX_RTU_ADU;

    /// An empty decoder.
    pub fn new() -> RtuDecoder {
        RtuDecoder {
            buf: Vec::with_capacity(Self::CAPACITY),
            discarded: 0,
        }
    }

    /// Room left for [`RtuDecoder::push`]; read at most this many bytes from the line.
    pub fn room(&self) -> usize {
        Self::CAPACITY - self.buf.len()
    }

    /// Append bytes from the line. Bytes beyond [`RtuDecoder::room`] push out the oldest ones
    /// (counted as discarded), so a caller that ignores `room` still cannot grow the buffer.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
        if self.buf.len() > Self::CAPACITY {
            self.discard(self.buf.len() - Self::CAPACITY);
        }
    }

    /// Bytes dropped so far while resynchronising (garbage, bad CRC, frames cut by a pause).
    pub fn discarded(&self) -> u64 {
        self.discarded
    }

    /// Bytes waiting.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    fn discard(&mut self, n: usize) {
        self.buf.drain(..n);
        self.discarded += n as u64;
    }

    fn candidate(bytes: &[u8], idle: bool) -> Candidate {
        let whole = |len: usize| {
            if !(MIN_RTU_ADU..=MAX_RTU_ADU).contains(&len) {
                return Candidate::NotAFrame;
            }
            if bytes.len() < len {
                return if idle {
                    Candidate::NotAFrame
                } else {
                    Candidate::Partial
                };
            }
            let crc = u16::from_le_bytes([bytes[len - 2], bytes[len - 1]]);
            if crc16(&bytes[..len - 2]) == crc {
                Candidate::Whole(len)
            } else {
                Candidate::NotAFrame
            }
        };
        // Function codes of requests are 1..=127; 0x80 and above flag exception answers.
        if bytes.get(1).is_some_and(|&f| f == 0 || f >= 0x80) {
            return Candidate::NotAFrame;
        }
        match request_len(bytes) {
            Ok(Some(len)) => whole(len),
            Ok(None) if idle => Candidate::NotAFrame,
            Ok(None) => Candidate::Partial,
            // Unknown shape: everything up to the pause is the frame.
            Err(()) if idle => whole(bytes.len()),
            Err(()) if bytes.len() >= MAX_RTU_ADU => Candidate::NotAFrame,
            Err(()) => Candidate::Partial,
        }
    }

    /// The next whole frame, if one is in. `idle` says the line has been quiet long enough to
    /// end a frame: bytes still waiting for more are then resolved as a frame of unknown shape
    /// or dropped.
    pub fn next_frame(&mut self, idle: bool) -> Option<Frame> {
        let mut first_partial = None;
        for start in 0..self.buf.len() {
            match Self::candidate(&self.buf[start..], idle) {
                Candidate::Whole(len) => {
                    self.discard(start);
                    let frame = Frame {
                        unit: self.buf[0],
                        pdu: self.buf[1..len - 2].to_vec(),
                    };
                    self.buf.drain(..len);
                    return Some(frame);
                }
                Candidate::Partial => {
                    first_partial.get_or_insert(start);
                }
                Candidate::NotAFrame => {}
            }
        }
        // Nothing whole: keep from the first start that may still become a frame.
        let keep_from = first_partial.unwrap_or(self.buf.len());
        self.discard(keep_from);
        None
    }
}

/// A TCP frame's header that no Modbus TCP peer sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MbapError {
    /// The protocol id is not 0 (Modbus).
    #[error("MBAP protocol id {0} is not 0 (Modbus)")]
    ProtocolId(u16),
    /// The length field is outside 2..=254 (unit id, function code, at most 252 data bytes).
    #[error("MBAP length {0} is outside 2..=254")]
    Length(u16),
}

/// A TCP frame read from a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpFrame {
    /// Transaction id, echoed in the answer.
    pub transaction: u16,
    /// The unit id and the PDU.
    pub frame: Frame,
}

/// Decode the TCP frame at the start of `buf`: `Ok(None)` while it is incomplete, otherwise the
/// frame and the bytes it took. A bad header is an error; the stream cannot be resynchronised
/// after it, so the connection should be closed.
pub fn decode_mbap(buf: &[u8]) -> Result<Option<(TcpFrame, usize)>, MbapError> {
    let Some(header) = buf.get(..MBAP_HEADER) else {
        return Ok(None);
    };
    let protocol = u16::from_be_bytes([header[2], header[3]]);
    if protocol != 0 {
        return Err(MbapError::ProtocolId(protocol));
    }
    let length = u16::from_be_bytes([header[4], header[5]]);
    if !(2..=1 + MAX_PDU as u16).contains(&length) {
        return Err(MbapError::Length(length));
    }
    let total = 6 + usize::from(length);
    let Some(adu) = buf.get(..total) else {
        return Ok(None);
    };
    let frame = TcpFrame {
        transaction: u16::from_be_bytes([adu[0], adu[1]]),
        frame: Frame {
            unit: adu[6],
            pdu: adu[MBAP_HEADER..].to_vec(),
        },
    };
    Ok(Some((frame, total)))
}

/// Append the TCP frame of `pdu` to `out`, with protocol id `protocol` (0 for Modbus; anything
/// else is a corrupted answer).
pub fn encode_mbap(transaction: u16, protocol: u16, unit: u8, pdu: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&transaction.to_be_bytes());
    out.extend_from_slice(&protocol.to_be_bytes());
    // A PDU is at most 253 bytes, so the length fits.
    out.extend_from_slice(&((pdu.len() + 1) as u16).to_be_bytes());
    out.push(unit);
    out.extend_from_slice(pdu);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rtu(unit: u8, pdu: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        encode_rtu(unit, pdu, false, &mut out);
        out
    }

    #[test]
    fn crc_of_known_frames() {
        let cases: &[(&[u8], [u8; 2])] = &[
            (&[0x01, 0x03, 0x00, 0x00, 0x00, 0x0A], [0xC5, 0xCD]),
            (&[0x01, 0x04, 0x00, 0x00, 0x00, 0x01], [0x31, 0xCA]),
            (&[0x11, 0x03, 0x00, 0x6B, 0x00, 0x03], [0x76, 0x87]),
            (&[0x01, 0x01, 0x00, 0x00, 0x00, 0x10], [0x3D, 0xC6]),
            (&[], [0xFF, 0xFF]),
        ];
        for (data, wire) in cases {
            assert_eq!(crc16(data).to_le_bytes(), *wire, "{data:02X?}");
        }
        assert_eq!(
            rtu(1, &[0x03, 0x00, 0x00, 0x00, 0x0A]),
            [0x01, 0x03, 0x00, 0x00, 0x00, 0x0A, 0xC5, 0xCD]
        );
    }

    #[test]
    fn requests_parse_as_a_slave_checks_them() {
        let ok = |t, a, q| {
            Ok(ReadRequest {
                table: t,
                address: a,
                quantity: q,
            })
        };
        let ex = |function, code| Err(Exception { function, code });
        let cases: &[(&[u8], Result<ReadRequest, Exception>)] = &[
            (
                &[0x03, 0x00, 0x00, 0x00, 0x0A],
                ok(Table::HoldingRegisters, 0, 10),
            ),
            (
                &[0x04, 0x00, 0x0C, 0x00, 0x02],
                ok(Table::InputRegisters, 12, 2),
            ),
            (&[0x01, 0x00, 0x00, 0x07, 0xD0], ok(Table::Coils, 0, 2000)),
            (
                &[0x02, 0xFF, 0xFF, 0x00, 0x01],
                ok(Table::DiscreteInputs, 0xFFFF, 1),
            ),
            (
                &[0x03, 0x00, 0x00, 0x00, 0x7D],
                ok(Table::HoldingRegisters, 0, 125),
            ),
            (&[0x03, 0x00, 0x00, 0x00, 0x7E], ex(0x03, 3)),
            (&[0x04, 0x00, 0x00, 0x00, 0x00], ex(0x04, 3)),
            (&[0x01, 0x00, 0x00, 0x07, 0xD1], ex(0x01, 3)),
            (&[0x03, 0x00, 0x00, 0x00], ex(0x03, 3)),
            (&[0x03, 0x00, 0x00, 0x00, 0x01, 0x00], ex(0x03, 3)),
            (&[0x06, 0x00, 0x00, 0x00, 0x01], ex(0x06, 1)),
            (&[0x2B, 0x0E, 0x01, 0x00], ex(0x2B, 1)),
            (&[0x83, 0x02], ex(0x03, 1)),
            (&[], ex(0x00, 1)),
        ];
        for (pdu, want) in cases {
            assert_eq!(parse_request(pdu), *want, "{pdu:02X?}");
        }
    }

    #[test]
    fn requests_round_trip_through_rtu_and_tcp() {
        for (table, address, quantity) in [
            (Table::Coils, 0, 16),
            (Table::DiscreteInputs, 3, 1),
            (Table::HoldingRegisters, 0, 16),
            (Table::InputRegisters, 12, 2),
        ] {
            let req = ReadRequest {
                table,
                address,
                quantity,
            };
            let mut dec = RtuDecoder::new();
            dec.push(&rtu(7, &request_pdu(req)));
            let frame = dec.next_frame(false).unwrap();
            assert_eq!(frame.unit, 7);
            assert_eq!(parse_request(&frame.pdu), Ok(req));
            assert_eq!(dec.pending(), 0);

            let mut tcp = Vec::new();
            encode_mbap(0xBEEF, 0, 9, &request_pdu(req), &mut tcp);
            let (got, used) = decode_mbap(&tcp).unwrap().unwrap();
            assert_eq!(used, tcp.len());
            assert_eq!(got.transaction, 0xBEEF);
            assert_eq!(got.frame.unit, 9);
            assert_eq!(parse_request(&got.frame.pdu), Ok(req));
        }
    }

    #[test]
    fn answers_encode_registers_big_endian_and_bits_lowest_first() {
        assert_eq!(
            registers_pdu(Table::HoldingRegisters, &[0xC822, 0xFB2E]),
            [0x03, 0x04, 0xC8, 0x22, 0xFB, 0x2E]
        );
        let bits: Vec<bool> = (0..10).map(|i| i % 2 == 0).collect();
        assert_eq!(bits_pdu(Table::Coils, &bits), [0x01, 0x02, 0x55, 0x01]);
        assert_eq!(bits_pdu(Table::DiscreteInputs, &[true]), [0x02, 0x01, 0x01]);
        let ex = Exception {
            function: 0x04,
            code: 0x02,
        };
        assert_eq!(ex.pdu(), [0x84, 0x02]);
        let mut out = Vec::new();
        encode_rtu(1, &ex.pdu(), false, &mut out);
        assert_eq!(out, [0x01, 0x84, 0x02, 0xC2, 0xC1]);
        let mut bad = Vec::new();
        encode_rtu(1, &ex.pdu(), true, &mut bad);
        assert_eq!(bad[..3], out[..3]);
        assert_ne!(bad[3..], out[3..]);
    }

    #[test]
    fn a_frame_arriving_in_pieces_is_decoded_once_whole() {
        let frame = rtu(1, &[0x03, 0x00, 0x00, 0x00, 0x0A]);
        for cut in 1..frame.len() {
            let mut dec = RtuDecoder::new();
            dec.push(&frame[..cut]);
            assert_eq!(dec.next_frame(false), None, "cut at {cut}");
            dec.push(&frame[cut..]);
            let got = dec.next_frame(false).unwrap();
            assert_eq!(got.pdu, [0x03, 0x00, 0x00, 0x00, 0x0A]);
            assert_eq!(dec.discarded(), 0, "cut at {cut}");
        }
    }

    #[test]
    fn garbage_before_a_frame_is_dropped_and_counted() {
        let frame = rtu(1, &[0x04, 0x00, 0x00, 0x00, 0x0E]);
        let garbage: &[&[u8]] = &[
            &[0x00],
            &[0x01, 0x83, 0x02],
            &[0xFF, 0xFF, 0x00],
            // Looks like a function 03 request but the CRC is wrong.
            &[0x01, 0x03, 0x00, 0x00, 0x00, 0x0A, 0x00, 0x00],
            // Looks like the start of a long write-multiple request.
            &[0x01, 0x10, 0x00, 0x00, 0x00, 0x05, 0x0A, 0x01],
            // A frame of the right shape cut short.
            &[0x01, 0x03, 0x00],
        ];
        for g in garbage {
            let mut dec = RtuDecoder::new();
            dec.push(g);
            dec.push(&frame);
            let got = dec.next_frame(false).expect("frame behind garbage");
            assert_eq!((got.unit, got.pdu.as_slice()), (1, &frame[1..6]));
            assert_eq!(dec.discarded(), g.len() as u64, "{g:02X?}");
            assert_eq!(dec.pending(), 0);
        }
    }

    #[test]
    fn two_frames_in_one_read_come_out_in_order() {
        let mut bytes = rtu(1, &[0x03, 0x00, 0x00, 0x00, 0x01]);
        bytes.extend(rtu(2, &[0x04, 0x00, 0x02, 0x00, 0x02]));
        let mut dec = RtuDecoder::new();
        dec.push(&bytes);
        assert_eq!(dec.next_frame(false).unwrap().unit, 1);
        assert_eq!(dec.next_frame(false).unwrap().unit, 2);
        assert_eq!(dec.next_frame(false), None);
    }

    #[test]
    fn unknown_function_codes_are_framed_by_a_pause() {
        let frame = rtu(3, &[0x41, 0x01, 0x02, 0x03]);
        let mut dec = RtuDecoder::new();
        dec.push(&frame);
        assert_eq!(dec.next_frame(false), None);
        let got = dec.next_frame(true).unwrap();
        assert_eq!((got.unit, got.pdu.as_slice()), (3, &[0x41, 1, 2, 3][..]));
        assert_eq!(dec.discarded(), 0);
    }

    #[test]
    fn a_pause_drops_what_cannot_be_completed() {
        let mut dec = RtuDecoder::new();
        dec.push(&[0x01, 0x03, 0x00, 0x00]);
        assert_eq!(dec.next_frame(false), None);
        assert_eq!(dec.pending(), 4);
        assert_eq!(dec.next_frame(true), None);
        assert_eq!((dec.pending(), dec.discarded()), (0, 4));
    }

    #[test]
    fn endless_garbage_stays_within_capacity() {
        let mut dec = RtuDecoder::new();
        let mut x = 0x1234_5678u32;
        let mut pushed = 0u64;
        for _ in 0..2_000 {
            let chunk: Vec<u8> = (0..97)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    // Function codes of unknown shape, so nothing is dropped before it must be.
                    (x as u8 & 0x3F) | 0x40
                })
                .collect();
            dec.push(&chunk[..chunk.len().min(dec.room())]);
            pushed += chunk.len().min(dec.room()) as u64;
            while dec.next_frame(false).is_some() {}
            assert!(dec.pending() <= RtuDecoder::CAPACITY);
            // Pushing past the room drops the oldest bytes instead of growing.
            dec.push(&chunk);
            pushed += chunk.len() as u64;
            assert!(dec.pending() <= RtuDecoder::CAPACITY);
            while dec.next_frame(false).is_some() {}
        }
        assert!(dec.pending() <= MAX_RTU_ADU);
        assert!(dec.discarded() + dec.pending() as u64 <= pushed);
        assert!(dec.discarded() > pushed / 2);
    }

    #[test]
    fn mbap_headers_are_checked_and_partial_frames_wait() {
        let mut tcp = Vec::new();
        encode_mbap(1, 0, 1, &[0x03, 0x00, 0x00, 0x00, 0x01], &mut tcp);
        for cut in 0..tcp.len() {
            assert_eq!(decode_mbap(&tcp[..cut]), Ok(None), "cut at {cut}");
        }
        let mut bad = tcp.clone();
        bad[3] = 1;
        assert_eq!(decode_mbap(&bad), Err(MbapError::ProtocolId(1)));
        for len in [0u16, 1, 255, 0xFFFF] {
            let mut bad = tcp.clone();
            bad[4..6].copy_from_slice(&len.to_be_bytes());
            assert_eq!(decode_mbap(&bad), Err(MbapError::Length(len)));
        }
        // Two frames back to back: the first one takes only its own bytes.
        let mut two = tcp.clone();
        two.extend_from_slice(&tcp);
        let (_, used) = decode_mbap(&two).unwrap().unwrap();
        assert_eq!(used, tcp.len());
    }
}
