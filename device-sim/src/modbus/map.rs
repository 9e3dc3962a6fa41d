//! The register map every unit serves, pure: live input registers from the drivers' readings,
//! a fixed holding pattern for exact checks of every type and word order, and coil and discrete
//! patterns.
//!
//! ```text
//! input (04)   0-1 temperature °C f32 BE   2-3 humidity % f32 BE   4-5 pressure hPa f32 BE
//!              6-7 battery % f32 BE        8 temperature×100 i16   9 humidity×100 u16
//!              10-11 pressure Pa u32 BE    12-13 temperature °C f32 LE (low word first)
//! holding (03) 0 51234 u16   1 -1234 i16   2-3 3000000123 u32 BE   4-5 same u32 LE
//!              6-7 -123456789 i32 BE       8-9 same i32 LE         10-11 230.5 f32 BE
//!              12-13 same f32 LE           14 unit id              15 answers sent, wrapping
//! coils (01)   0-15: even on, odd off      discrete inputs (02) 0-15: odd on, even off
//! ```
//!
//! BE = big word order (high word first), LE = little word order (low word first); inside a
//! register the bytes are always big endian.

use super::frame::{Exception, ReadRequest, Table, bits_pdu, exception, registers_pdu};

/// Input registers served (addresses `0..INPUT_REGISTERS`).
pub const INPUT_REGISTERS: u16 = 14;
/// Holding registers served.
pub const HOLDING_REGISTERS: u16 = 16;
/// Coils and discrete inputs served, each.
pub const BITS: u16 = 16;

/// The fixed holding values, for the docs and the tests.
pub mod holding {
    /// Register 0, u16.
    pub const U16: u16 = 51234;
    /// Register 1, i16.
    pub const I16: i16 = -1234;
    /// Registers 2–3 (big word order) and 4–5 (little).
    pub const U32: u32 = 3_000_000_123;
    /// Registers 6–7 (big word order) and 8–9 (little).
    pub const I32: i32 = -123_456_789;
    /// Registers 10–11 (big word order) and 12–13 (little).
    pub const F32: f32 = 230.5;
}

/// The two registers of a 32-bit value, high word first.
fn big(bits: u32) -> [u16; 2] {
    [(bits >> 16) as u16, bits as u16]
}

/// The two registers of a 32-bit value, low word first.
fn little(bits: u32) -> [u16; 2] {
    [bits as u16, (bits >> 16) as u16]
}

/// One reading set of a unit, as the drivers returned it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Readings {
    /// °C.
    pub temperature_c: f64,
    /// %RH.
    pub humidity_pct: f64,
    /// hPa.
    pub pressure_hpa: f64,
    /// %.
    pub battery_pct: f64,
}

/// The input registers of a reading set.
pub fn input_registers(r: &Readings) -> [u16; INPUT_REGISTERS as usize] {
    let t = (r.temperature_c as f32).to_bits();
    let mut regs = [0u16; INPUT_REGISTERS as usize];
    regs[0..2].copy_from_slice(&big(t));
    regs[2..4].copy_from_slice(&big((r.humidity_pct as f32).to_bits()));
    regs[4..6].copy_from_slice(&big((r.pressure_hpa as f32).to_bits()));
    regs[6..8].copy_from_slice(&big((r.battery_pct as f32).to_bits()));
    // `as` saturates, so a value outside the type's range cannot wrap around.
    regs[8] = ((r.temperature_c * 100.0).round() as i16) as u16;
    regs[9] = (r.humidity_pct * 100.0).round() as u16;
    regs[10..12].copy_from_slice(&big((r.pressure_hpa * 100.0).round() as u32));
    regs[12..14].copy_from_slice(&little(t));
    regs
}

/// The holding registers of unit `unit` that has sent `answered` normal answers before.
pub fn holding_registers(unit: u8, answered: u64) -> [u16; HOLDING_REGISTERS as usize] {
    let mut regs = [0u16; HOLDING_REGISTERS as usize];
    regs[0] = holding::U16;
    regs[1] = holding::I16 as u16;
    regs[2..4].copy_from_slice(&big(holding::U32));
    regs[4..6].copy_from_slice(&little(holding::U32));
    regs[6..8].copy_from_slice(&big(holding::I32 as u32));
    regs[8..10].copy_from_slice(&little(holding::I32 as u32));
    regs[10..12].copy_from_slice(&big(holding::F32.to_bits()));
    regs[12..14].copy_from_slice(&little(holding::F32.to_bits()));
    regs[14] = u16::from(unit);
    regs[15] = answered as u16;
    regs
}

/// Coil `address`: even addresses on.
pub fn coil(address: u16) -> bool {
    address.is_multiple_of(2)
}

/// Discrete input `address`: odd addresses on.
pub fn discrete_input(address: u16) -> bool {
    address % 2 == 1
}

/// What a unit shows at the moment of a request.
#[derive(Debug, Clone, Copy)]
pub struct UnitView<'a> {
    /// Unit id.
    pub unit: u8,
    /// Normal answers the unit sent before this one.
    pub answered: u64,
    /// Current input registers.
    pub input: &'a [u16; INPUT_REGISTERS as usize],
}

/// The answer PDU to `req`, or exception 02 when the range leaves the table.
pub fn answer(view: UnitView<'_>, req: ReadRequest) -> Result<Vec<u8>, Exception> {
    let size = match req.table {
        Table::Coils | Table::DiscreteInputs => BITS,
        Table::HoldingRegisters => HOLDING_REGISTERS,
        Table::InputRegisters => INPUT_REGISTERS,
    };
    let start = usize::from(req.address);
    let end = start + usize::from(req.quantity);
    if end > usize::from(size) {
        return Err(Exception {
            function: req.table.function(),
            code: exception::ILLEGAL_DATA_ADDRESS,
        });
    }
    let addresses = req.address..req.address + req.quantity;
    Ok(match req.table {
        Table::Coils => bits_pdu(req.table, &addresses.map(coil).collect::<Vec<_>>()),
        Table::DiscreteInputs => bits_pdu(
            req.table,
            &addresses.map(discrete_input).collect::<Vec<_>>(),
        ),
        Table::HoldingRegisters => registers_pdu(
            req.table,
            &holding_registers(view.unit, view.answered)[start..end],
        ),
        Table::InputRegisters => registers_pdu(req.table, &view.input[start..end]),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const READINGS: Readings = Readings {
        temperature_c: 21.37,
        humidity_pct: 55.25,
        pressure_hpa: 1013.25,
        battery_pct: 80.5,
    };

    fn read(table: Table, address: u16, quantity: u16) -> Result<Vec<u8>, Exception> {
        let input = input_registers(&READINGS);
        let view = UnitView {
            unit: 7,
            answered: 65_537,
            input: &input,
        };
        answer(
            view,
            ReadRequest {
                table,
                address,
                quantity,
            },
        )
    }

    #[test]
    fn holding_pattern_has_every_type_in_both_word_orders() {
        let pdu = read(Table::HoldingRegisters, 0, 16).unwrap();
        assert_eq!(pdu[..2], [0x03, 32]);
        let words: Vec<u16> = pdu[2..]
            .chunks(2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
            .collect();
        assert_eq!(
            words,
            [
                51234, 0xFB2E, 0xB2D0, 0x5E7B, 0x5E7B, 0xB2D0, 0xF8A4, 0x32EB, 0x32EB, 0xF8A4,
                0x4366, 0x8000, 0x8000, 0x4366, 7, 1
            ]
        );
    }

    #[test]
    fn input_registers_carry_the_readings_in_each_form() {
        let r = input_registers(&READINGS);
        let f32_at = |i: usize| f32::from_bits(u32::from(r[i]) << 16 | u32::from(r[i + 1]));
        assert_eq!(f32_at(0), 21.37f32);
        assert_eq!(f32_at(2), 55.25f32);
        assert_eq!(f32_at(4), 1013.25f32);
        assert_eq!(f32_at(6), 80.5f32);
        assert_eq!(r[8] as i16, 2137);
        assert_eq!(r[9], 5525);
        assert_eq!(u32::from(r[10]) << 16 | u32::from(r[11]), 101_325);
        assert_eq!([r[12], r[13]], [r[1], r[0]]);
        let cold = input_registers(&Readings {
            temperature_c: -12.34,
            ..READINGS
        });
        assert_eq!(cold[8] as i16, -1234);
    }

    #[test]
    fn bits_alternate_from_any_start() {
        assert_eq!(read(Table::Coils, 0, 16).unwrap(), [0x01, 2, 0x55, 0x55]);
        assert_eq!(
            read(Table::DiscreteInputs, 0, 16).unwrap(),
            [0x02, 2, 0xAA, 0xAA]
        );
        assert_eq!(read(Table::Coils, 1, 3).unwrap(), [0x01, 1, 0b010]);
        assert_eq!(read(Table::DiscreteInputs, 15, 1).unwrap(), [0x02, 1, 1]);
    }

    #[test]
    fn ranges_leaving_a_table_are_exception_02() {
        for (table, address, quantity) in [
            (Table::HoldingRegisters, 0, 17),
            (Table::HoldingRegisters, 16, 1),
            (Table::InputRegisters, 13, 2),
            (Table::InputRegisters, 0xFFFF, 125),
            (Table::Coils, 16, 1),
            (Table::DiscreteInputs, 0, 2000),
        ] {
            assert_eq!(
                read(table, address, quantity),
                Err(Exception {
                    function: table.function(),
                    code: 2
                }),
                "{table:?} {address} {quantity}"
            );
        }
        assert!(read(Table::InputRegisters, 13, 1).is_ok());
    }
}
