//! Sensirion SHT3x-DIS humidity and temperature sensor (SHT30/SHT31/SHT35).
//!
//! Follows the *Datasheet SHT3x-DIS* (version 6, 2019): 16-bit commands (§4.3–4.11), results as
//! 16-bit words each followed by a CRC-8 (§4.12: polynomial 0x31, init 0xFF, `crc(0xBEEF) =
//! 0x92`), and the conversions of §4.13:
//!
//! ```text
//! RH = 100 * S_RH / (2^16 - 1)          [%RH]
//! T  = -45 + 175 * S_T / (2^16 - 1)     [°C]
//! ```

use embedded_hal::delay::DelayNs;
use embedded_hal::i2c::I2c;

use super::DriverError;

/// I2C address with the ADDR pin low (datasheet Table 7).
pub const ADDRESS_LOW: u8 = 0x44;
/// I2C address with the ADDR pin high.
pub const ADDRESS_HIGH: u8 = 0x45;

/// Commands (datasheet Tables 9–17), most significant byte first on the wire.
pub mod cmd {
    /// Single shot, high repeatability, clock stretching disabled.
    pub const MEASURE_HIGH: u16 = 0x2400;
    /// Single shot, medium repeatability, clock stretching disabled.
    pub const MEASURE_MEDIUM: u16 = 0x240B;
    /// Single shot, low repeatability, clock stretching disabled.
    pub const MEASURE_LOW: u16 = 0x2416;
    /// Soft reset.
    pub const SOFT_RESET: u16 = 0x30A2;
    /// Heater on.
    pub const HEATER_ENABLE: u16 = 0x306D;
    /// Heater off.
    pub const HEATER_DISABLE: u16 = 0x3066;
    /// Read the status register (one word plus CRC).
    pub const READ_STATUS: u16 = 0xF32D;
    /// Clear the alert flags of the status register.
    pub const CLEAR_STATUS: u16 = 0x3041;
}

/// Status register bits (datasheet Table 17).
pub mod status {
    /// Heater is on.
    pub const HEATER_ON: u16 = 1 << 13;
    /// A reset (power-on, soft reset or reset pin) happened since the last clear.
    pub const RESET_DETECTED: u16 = 1 << 4;
    /// The last command was not processed (invalid or wrong checksum).
    pub const COMMAND_FAILED: u16 = 1 << 1;
    /// The checksum of the last write transfer failed.
    pub const WRITE_CRC_FAILED: u16 = 1 << 0;
}

/// Measurement repeatability; higher costs more time and current, and lowers noise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Repeatability {
    /// 0.04 °C noise, at most 15.5 ms.
    #[default]
    High,
    /// 0.08 °C noise, at most 6.5 ms.
    Medium,
    /// 0.15 °C noise, at most 4.5 ms.
    Low,
}

impl Repeatability {
    fn command(self) -> u16 {
        match self {
            Repeatability::High => cmd::MEASURE_HIGH,
            Repeatability::Medium => cmd::MEASURE_MEDIUM,
            Repeatability::Low => cmd::MEASURE_LOW,
        }
    }

    /// Maximum measurement duration in microseconds (datasheet Table 4).
    pub fn max_duration_us(self) -> u32 {
        match self {
            Repeatability::High => 15_500,
            Repeatability::Medium => 6_500,
            Repeatability::Low => 4_500,
        }
    }
}

/// One converted measurement.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Measurement {
    /// Temperature in °C.
    pub temperature_c: f64,
    /// Relative humidity in %RH.
    pub humidity_pct: f64,
}

/// CRC-8 of the datasheet §4.12: polynomial x^8 + x^5 + x^4 + 1 (0x31), init 0xFF, no reflection,
/// no final XOR.
pub fn crc8(data: &[u8]) -> u8 {
    let mut crc: u8 = 0xFF;
    for &byte in data {
        crc ^= byte;
        for _ in 0..8 {
            crc = if crc & 0x80 != 0 {
                (crc << 1) ^ 0x31
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// Raw temperature word to °C (datasheet §4.13).
pub fn temperature_from_raw(raw: u16) -> f64 {
    -45.0 + 175.0 * f64::from(raw) / 65535.0
}

/// Raw humidity word to %RH (datasheet §4.13).
pub fn humidity_from_raw(raw: u16) -> f64 {
    100.0 * f64::from(raw) / 65535.0
}

/// °C to the raw word the chip would report (inverse of [`temperature_from_raw`], clamped).
pub fn temperature_to_raw(celsius: f64) -> u16 {
    ((celsius + 45.0) / 175.0 * 65535.0)
        .round()
        .clamp(0.0, 65535.0) as u16
}

/// %RH to the raw word the chip would report (inverse of [`humidity_from_raw`], clamped).
pub fn humidity_to_raw(pct: f64) -> u16 {
    (pct / 100.0 * 65535.0).round().clamp(0.0, 65535.0) as u16
}

/// Driver for one SHT3x on an I2C bus.
#[derive(Debug)]
pub struct Sht3x<I2C> {
    i2c: I2C,
    address: u8,
}

impl<I2C: I2c> Sht3x<I2C> {
    /// A driver for the chip at `address` ([`ADDRESS_LOW`] or [`ADDRESS_HIGH`]).
    pub fn new(i2c: I2C, address: u8) -> Self {
        Sht3x { i2c, address }
    }

    /// Give the bus back.
    pub fn release(self) -> I2C {
        self.i2c
    }

    fn command(&mut self, command: u16) -> Result<(), DriverError<I2C::Error>> {
        self.i2c
            .write(self.address, &command.to_be_bytes())
            .map_err(DriverError::I2c)
    }

    /// Read `N` CRC-protected words.
    fn read_words<const N: usize>(&mut self) -> Result<[u16; N], DriverError<I2C::Error>> {
        // At most two words are ever read; 6 bytes covers both.
        let mut buf = [0u8; 6];
        let bytes = &mut buf[..N * 3];
        self.i2c
            .read(self.address, bytes)
            .map_err(DriverError::I2c)?;
        let mut words = [0u16; N];
        for (word, chunk) in words.iter_mut().zip(bytes.chunks_exact(3)) {
            let computed = crc8(&chunk[..2]);
            if computed != chunk[2] {
                return Err(DriverError::Crc {
                    computed,
                    received: chunk[2],
                });
            }
            *word = u16::from_be_bytes([chunk[0], chunk[1]]);
        }
        Ok(words)
    }

    /// Soft reset (datasheet §4.9); the chip needs up to 1.5 ms afterwards.
    pub fn soft_reset(&mut self, delay: &mut impl DelayNs) -> Result<(), DriverError<I2C::Error>> {
        self.command(cmd::SOFT_RESET)?;
        delay.delay_us(1_500);
        Ok(())
    }

    /// Switch the internal heater (datasheet §4.10).
    pub fn set_heater(&mut self, on: bool) -> Result<(), DriverError<I2C::Error>> {
        self.command(if on {
            cmd::HEATER_ENABLE
        } else {
            cmd::HEATER_DISABLE
        })
    }

    /// Read the status register (datasheet §4.11).
    pub fn status(&mut self) -> Result<u16, DriverError<I2C::Error>> {
        self.command(cmd::READ_STATUS)?;
        let [status] = self.read_words::<1>()?;
        Ok(status)
    }

    /// Clear the status register's alert flags.
    pub fn clear_status(&mut self) -> Result<(), DriverError<I2C::Error>> {
        self.command(cmd::CLEAR_STATUS)
    }

    /// Start a single-shot measurement without clock stretching.
    pub fn start_measurement(
        &mut self,
        repeatability: Repeatability,
    ) -> Result<(), DriverError<I2C::Error>> {
        self.command(repeatability.command())
    }

    /// Read the result of a finished measurement; a real chip NACKs while it is still measuring.
    pub fn read_measurement(&mut self) -> Result<Measurement, DriverError<I2C::Error>> {
        let [t, rh] = self.read_words::<2>()?;
        Ok(Measurement {
            temperature_c: temperature_from_raw(t),
            humidity_pct: humidity_from_raw(rh),
        })
    }

    /// Start a measurement, wait the datasheet's maximum duration, read and convert it.
    pub fn measure(
        &mut self,
        repeatability: Repeatability,
        delay: &mut impl DelayNs,
    ) -> Result<Measurement, DriverError<I2C::Error>> {
        self.start_measurement(repeatability)?;
        delay.delay_us(repeatability.max_duration_us());
        self.read_measurement()
    }
}
