//! Maxim MAX17048 single-cell fuel gauge (the "battery" metric).
//!
//! Follows the *MAX17048/MAX17049 datasheet* register table: 16-bit big-endian registers,
//! `VCELL` (0x02) at 78.125 µV per LSB, `SOC` (0x04) in 1/256 % per LSB, `VERSION` (0x08).

use embedded_hal::i2c::I2c;

use super::DriverError;

/// Fixed I2C address.
pub const ADDRESS: u8 = 0x36;

/// Register addresses.
pub mod reg {
    /// Cell voltage, 78.125 µV/LSB.
    pub const VCELL: u8 = 0x02;
    /// State of charge, 1/256 %/LSB.
    pub const SOC: u8 = 0x04;
    /// Production version (0x001_ family).
    pub const VERSION: u8 = 0x08;
}

/// `VCELL` raw to volts.
pub fn volts_from_raw(raw: u16) -> f64 {
    f64::from(raw) * 78.125e-6
}

/// Volts to `VCELL` raw.
pub fn volts_to_raw(volts: f64) -> u16 {
    (volts / 78.125e-6).round().clamp(0.0, 65535.0) as u16
}

/// `SOC` raw to percent.
pub fn percent_from_raw(raw: u16) -> f64 {
    f64::from(raw) / 256.0
}

/// Percent to `SOC` raw.
pub fn percent_to_raw(pct: f64) -> u16 {
    (pct * 256.0).round().clamp(0.0, 65535.0) as u16
}

/// Driver for the gauge.
#[derive(Debug)]
pub struct Max17048<I2C> {
    i2c: I2C,
}

impl<I2C: I2c> Max17048<I2C> {
    /// A driver on `i2c` at the fixed address.
    pub fn new(i2c: I2C) -> Self {
        Max17048 { i2c }
    }

    /// Give the bus back.
    pub fn release(self) -> I2C {
        self.i2c
    }

    fn read_word(&mut self, register: u8) -> Result<u16, DriverError<I2C::Error>> {
        let mut b = [0u8; 2];
        self.i2c
            .write_read(ADDRESS, &[register], &mut b)
            .map_err(DriverError::I2c)?;
        Ok(u16::from_be_bytes(b))
    }

    /// Cell voltage in volts.
    pub fn voltage(&mut self) -> Result<f64, DriverError<I2C::Error>> {
        Ok(volts_from_raw(self.read_word(reg::VCELL)?))
    }

    /// State of charge in percent.
    pub fn state_of_charge(&mut self) -> Result<f64, DriverError<I2C::Error>> {
        Ok(percent_from_raw(self.read_word(reg::SOC)?))
    }

    /// The `VERSION` register.
    pub fn version(&mut self) -> Result<u16, DriverError<I2C::Error>> {
        self.read_word(reg::VERSION)
    }
}
