//! Sensor drivers written against `embedded-hal` 1.0.
//!
//! Every driver is generic over [`embedded_hal::i2c::I2c`], so the same code reads the simulated
//! bus in [`crate::bus`] and real chips on a Raspberry Pi (`linux_embedded_hal::I2cdev`).
//! Register maps and conversion formulas follow the manufacturers' datasheets; each module names
//! the document and section it follows.

pub mod bmp280;
pub mod max17048;
pub mod sht3x;

/// Errors from a driver: the bus failed, or the chip answered something the datasheet rules out.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DriverError<E: core::fmt::Debug> {
    /// The I2C transaction failed (no device at the address, NACK, bus error).
    #[error("i2c bus error: {0:?}")]
    I2c(E),
    /// A Sensirion word arrived with a CRC-8 that does not match its two data bytes.
    #[error("crc mismatch: computed {computed:#04x}, received {received:#04x}")]
    Crc {
        /// CRC computed over the received data bytes.
        computed: u8,
        /// CRC byte the chip sent.
        received: u8,
    },
    /// The chip-id register does not hold the value this driver is for.
    #[error("unexpected chip id {found:#04x} (expected {expected:#04x})")]
    WrongChipId {
        /// Value the driver expects (from the datasheet).
        expected: u8,
        /// Value read from the chip.
        found: u8,
    },
    /// A measurement did not finish within the datasheet's maximum conversion time.
    #[error("measurement did not complete in time")]
    Timeout,
}

impl<E: core::fmt::Debug> DriverError<E> {
    /// True when retrying the same read may succeed (a transient bus or CRC error), false when
    /// the wrong chip is wired up.
    pub fn is_retryable(&self) -> bool {
        !matches!(self, DriverError::WrongChipId { .. })
    }
}
