//! What one poll of a slave reads, and how the answers become numbers. Pure: no I/O.
//!
//! [`plan`] groups a slave's registers into as few read requests as possible: registers of one
//! kind whose addresses touch or overlap share a request, up to [`MAX_REGISTERS`] registers or
//! [`MAX_BITS`] bits (the protocol's limits). A gap between two registers starts a new request,
//! so nothing is read that was not configured (a slave may answer exception 02 for an unmapped
//! address in between), and a 32-bit value is never split over two requests.
//!
//! [`raw_value`] turns the registers of one value into its raw number: 16-bit values as they
//! are (`i16` as two's complement), 32-bit ones from two registers in the configured word order
//! (bytes inside a register are big endian, as Modbus says), `f32` as IEEE 754 bits. The
//! reading's value is then [`scaled`]: `raw * scale + offset`.

use gateway_config::{DataType, ModbusRegister, RegisterKind, RegisterValue, WordOrder};

/// Most registers one read request (functions 03, 04) may ask for.
pub const MAX_REGISTERS: u16 = 125;
/// Most bits one read request (functions 01, 02) may ask for.
pub const MAX_BITS: u16 = 2000;

/// One read request of a poll.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadRequest {
    pub kind: RegisterKind,
    /// First address read.
    pub address: u16,
    /// Registers or bits read, 1..=[`MAX_REGISTERS`] or 1..=[`MAX_BITS`].
    pub count: u16,
    /// Indexes (into the slave's registers) of the values this request reads, by address.
    pub values: Vec<usize>,
}

/// The limit of one request of this kind.
fn limit(kind: RegisterKind) -> u32 {
    u32::from(if kind.is_bit() {
        MAX_BITS
    } else {
        MAX_REGISTERS
    })
}

/// The requests that read every register of a slave, as few as the rules above allow, ordered by
/// kind and address.
pub fn plan(registers: &[ModbusRegister]) -> Vec<ReadRequest> {
    let mut order: Vec<usize> = (0..registers.len()).collect();
    order.sort_by_key(|&i| (registers[i].kind, registers[i].address));
    let mut requests: Vec<ReadRequest> = Vec::new();
    for i in order {
        let r = &registers[i];
        let start = u32::from(r.address);
        let end = start + u32::from(r.value.span());
        if let Some(last) = requests.last_mut() {
            let last_start = u32::from(last.address);
            let last_end = last_start + u32::from(last.count);
            let merged_end = last_end.max(end);
            if last.kind == r.kind && start <= last_end && merged_end - last_start <= limit(r.kind)
            {
                // Fits: at most `limit` (≤ 2000) after the check above.
                last.count = (merged_end - last_start) as u16;
                last.values.push(i);
                continue;
            }
        }
        requests.push(ReadRequest {
            kind: r.kind,
            address: r.address,
            count: r.value.span(),
            values: vec![i],
        });
    }
    requests
}

/// The raw number of a value from its registers (`words[0]` at the value's address; bits as 0
/// or 1 in `words[0]`). `None` when `words` is shorter than the value.
pub fn raw_value(value: RegisterValue, words: &[u16]) -> Option<f64> {
    Some(match value {
        RegisterValue::Bit => f64::from(u8::from(*words.first()? != 0)),
        RegisterValue::Word(DataType::I16) => f64::from(*words.first()? as i16),
        RegisterValue::Word(_) => f64::from(*words.first()?),
        RegisterValue::DoubleWord(data_type, order) => {
            let (first, second) = (*words.first()?, *words.get(1)?);
            let (high, low) = match order {
                WordOrder::Big => (first, second),
                WordOrder::Little => (second, first),
            };
            let bits = (u32::from(high) << 16) | u32::from(low);
            match data_type {
                DataType::I32 => f64::from(bits as i32),
                DataType::F32 => f64::from(f32::from_bits(bits)),
                _ => f64::from(bits),
            }
        }
    })
}

/// The reading's value: `raw * scale + offset`.
pub fn scaled(register: &ModbusRegister, raw: f64) -> f64 {
    raw * register.scale + register.offset
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(kind: RegisterKind, address: u16, value: RegisterValue) -> ModbusRegister {
        ModbusRegister {
            metric: format!("m{address}"),
            kind,
            address,
            value,
            scale: 1.0,
            offset: 0.0,
            unit: None,
        }
    }

    const U16: RegisterValue = RegisterValue::Word(DataType::U16);
    const F32: RegisterValue = RegisterValue::DoubleWord(DataType::F32, WordOrder::Big);

    fn spans(requests: &[ReadRequest]) -> Vec<(RegisterKind, u16, u16)> {
        requests
            .iter()
            .map(|r| (r.kind, r.address, r.count))
            .collect()
    }

    #[test]
    fn contiguous_registers_of_one_kind_share_a_request_and_gaps_split() {
        use RegisterKind::*;
        let regs = [
            reg(Input, 4, F32),
            reg(Input, 0, F32),
            reg(Input, 2, F32),
            reg(Input, 10, U16),
            reg(Holding, 6, U16),
            reg(Coil, 0, RegisterValue::Bit),
            reg(Coil, 1, RegisterValue::Bit),
            reg(Discrete, 1, RegisterValue::Bit),
        ];
        let requests = plan(&regs);
        assert_eq!(
            spans(&requests),
            [
                (Holding, 6, 1),
                (Input, 0, 6),
                (Input, 10, 1),
                (Coil, 0, 2),
                (Discrete, 1, 1)
            ]
        );
        assert_eq!(requests[1].values, [1, 2, 0], "by address");
    }

    #[test]
    fn overlapping_values_share_the_registers_they_have_in_common() {
        let regs = [
            reg(RegisterKind::Holding, 0, F32),
            reg(RegisterKind::Holding, 1, U16),
        ];
        assert_eq!(spans(&plan(&regs)), [(RegisterKind::Holding, 0, 2)]);
    }

    #[test]
    fn a_request_holds_at_most_125_registers_and_never_splits_a_32_bit_value() {
        // 63 f32 values back to back: 126 registers.
        let regs: Vec<_> = (0..63)
            .map(|i| reg(RegisterKind::Input, i * 2, F32))
            .collect();
        let requests = plan(&regs);
        assert_eq!(
            spans(&requests),
            [(RegisterKind::Input, 0, 124), (RegisterKind::Input, 124, 2)]
        );
        let bits: Vec<_> = (0..2001)
            .map(|i| reg(RegisterKind::Coil, i, RegisterValue::Bit))
            .collect();
        assert_eq!(
            spans(&plan(&bits)),
            [(RegisterKind::Coil, 0, 2000), (RegisterKind::Coil, 2000, 1)]
        );
    }

    #[test]
    fn values_at_the_top_of_the_address_space_do_not_overflow() {
        let regs = [
            reg(RegisterKind::Holding, 65534, F32),
            reg(RegisterKind::Holding, 65535, U16),
        ];
        assert_eq!(spans(&plan(&regs)), [(RegisterKind::Holding, 65534, 2)]);
    }

    /// The device-sim holding pattern: every type in both word orders.
    #[test]
    fn every_type_and_word_order_decodes_the_holding_pattern() {
        use DataType::*;
        use RegisterValue::{DoubleWord, Word};
        use WordOrder::*;
        let f = 230.5f32.to_bits();
        let (fh, fl) = ((f >> 16) as u16, f as u16);
        let u = 3_000_000_123u32;
        let (uh, ul) = ((u >> 16) as u16, u as u16);
        let i = -123_456_789i32 as u32;
        let (ih, il) = ((i >> 16) as u16, i as u16);
        let cases: [(RegisterValue, [u16; 2], f64); 8] = [
            (Word(U16), [51234, 0], 51234.0),
            (Word(I16), [(-1234i16) as u16, 0], -1234.0),
            (DoubleWord(U32, Big), [uh, ul], 3_000_000_123.0),
            (DoubleWord(U32, Little), [ul, uh], 3_000_000_123.0),
            (DoubleWord(I32, Big), [ih, il], -123_456_789.0),
            (DoubleWord(I32, Little), [il, ih], -123_456_789.0),
            (DoubleWord(F32, Big), [fh, fl], 230.5),
            (DoubleWord(F32, Little), [fl, fh], 230.5),
        ];
        for (value, words, expected) in cases {
            assert_eq!(raw_value(value, &words), Some(expected), "{value:?}");
        }
        // The word order matters: read the wrong way round, the numbers differ.
        assert_ne!(
            raw_value(DoubleWord(U32, Big), &[ul, uh]),
            Some(3_000_000_123.0)
        );
        assert_eq!(
            raw_value(DoubleWord(F32, Big), &[fh]),
            None,
            "one word short"
        );
        assert_eq!(raw_value(RegisterValue::Bit, &[1]), Some(1.0));
        assert_eq!(raw_value(RegisterValue::Bit, &[0]), Some(0.0));
    }

    #[test]
    fn scale_and_offset_apply_to_every_type() {
        let mut r = reg(RegisterKind::Holding, 0, RegisterValue::Word(DataType::I16));
        r.scale = 0.1;
        r.offset = -40.0;
        let raw = raw_value(r.value, &[(-1234i16) as u16]).unwrap();
        assert!((scaled(&r, raw) - (-163.4)).abs() < 1e-9);
        r.value = RegisterValue::DoubleWord(DataType::U32, WordOrder::Little);
        r.scale = 0.001;
        r.offset = 1.0;
        let raw = raw_value(r.value, &[0x5E7B, 0xB2D0]).unwrap();
        assert!((scaled(&r, raw) - 3_000_001.123).abs() < 1e-6);
    }
}
