//! A simulated I2C bus that answers the drivers' registers from a physical model.
//!
//! [`SimBus`] implements [`embedded_hal::i2c::I2c`] and hosts three chips: an SHT3x at 0x44, a
//! BMP280 at 0x76 and a MAX17048 at 0x36. Each answers the protocol of its datasheet (16-bit
//! commands with CRC-protected words; a register pointer with auto-increment and address/data
//! pair writes; big-endian word registers), so the drivers in [`crate::drivers`] run unchanged.
//! The values come from an [`Environment`] the caller sets before each read.
//!
//! Simplifications, on purpose: conversions finish instantly (the BMP280 reports `measuring`
//! once after a forced-mode trigger, to exercise the driver's polling loop), clock stretching and
//! bus timing are not modelled, and a read from an absent address fails with
//! `NoAcknowledge(Address)` like a real bus.

use embedded_hal::i2c::{self, ErrorKind, NoAcknowledgeSource, Operation, SevenBitAddress};

use crate::drivers::{bmp280, max17048, sht3x};

/// The physical conditions the simulated chips measure.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Environment {
    /// Air temperature in °C.
    pub temperature_c: f64,
    /// Relative humidity in %RH.
    pub humidity_pct: f64,
    /// Air pressure in Pa.
    pub pressure_pa: f64,
    /// Battery cell voltage in volts.
    pub battery_v: f64,
    /// Battery state of charge in percent.
    pub battery_pct: f64,
}

impl Default for Environment {
    fn default() -> Self {
        Environment {
            temperature_c: 21.0,
            humidity_pct: 50.0,
            pressure_pa: 101_325.0,
            battery_v: 3.9,
            battery_pct: 80.0,
        }
    }
}

/// The error a simulated transaction fails with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("simulated i2c error: {kind:?}")]
pub struct SimBusError {
    /// What went wrong, in embedded-hal's words.
    pub kind: ErrorKind,
}

impl i2c::Error for SimBusError {
    fn kind(&self) -> ErrorKind {
        self.kind
    }
}

fn nack_address() -> SimBusError {
    SimBusError {
        kind: ErrorKind::NoAcknowledge(NoAcknowledgeSource::Address),
    }
}

fn nack_data() -> SimBusError {
    SimBusError {
        kind: ErrorKind::NoAcknowledge(NoAcknowledgeSource::Data),
    }
}

/// Simulated SHT3x state.
#[derive(Debug, Clone, Default)]
struct SimSht3x {
    /// Bytes the next read returns (a finished measurement or the status word).
    output: Option<Vec<u8>>,
    status: u16,
}

impl SimSht3x {
    fn new() -> Self {
        SimSht3x {
            output: None,
            // After power-up the reset-detected flag is set (datasheet Table 17).
            status: sht3x::status::RESET_DETECTED,
        }
    }

    fn word(value: u16) -> [u8; 3] {
        let b = value.to_be_bytes();
        [b[0], b[1], sht3x::crc8(&b)]
    }

    fn write(&mut self, bytes: &[u8], env: &Environment) -> Result<(), SimBusError> {
        if bytes.len() != 2 {
            self.status |= sht3x::status::COMMAND_FAILED;
            return Err(nack_data());
        }
        let command = u16::from_be_bytes([bytes[0], bytes[1]]);
        self.status &= !sht3x::status::COMMAND_FAILED;
        match command {
            sht3x::cmd::MEASURE_HIGH | sht3x::cmd::MEASURE_MEDIUM | sht3x::cmd::MEASURE_LOW => {
                let mut out = Vec::with_capacity(6);
                out.extend_from_slice(&Self::word(sht3x::temperature_to_raw(env.temperature_c)));
                out.extend_from_slice(&Self::word(sht3x::humidity_to_raw(env.humidity_pct)));
                self.output = Some(out);
            }
            sht3x::cmd::READ_STATUS => {
                self.output = Some(Self::word(self.status).to_vec());
            }
            sht3x::cmd::CLEAR_STATUS => {
                self.status &= !(sht3x::status::RESET_DETECTED);
            }
            sht3x::cmd::SOFT_RESET => {
                *self = SimSht3x::new();
            }
            sht3x::cmd::HEATER_ENABLE => self.status |= sht3x::status::HEATER_ON,
            sht3x::cmd::HEATER_DISABLE => self.status &= !sht3x::status::HEATER_ON,
            _ => {
                self.status |= sht3x::status::COMMAND_FAILED;
                return Err(nack_data());
            }
        }
        Ok(())
    }

    fn read(&mut self, buf: &mut [u8]) -> Result<(), SimBusError> {
        // A read with no result pending is NACKed, as on the real chip.
        let out = self.output.take().ok_or_else(nack_address)?;
        for (i, b) in buf.iter_mut().enumerate() {
            *b = out.get(i).copied().unwrap_or(0xFF);
        }
        Ok(())
    }
}

/// Simulated BMP280 register file.
#[derive(Debug, Clone)]
struct SimBmp280 {
    regs: [u8; 256],
    pointer: u8,
    calibration: bmp280::Calibration,
    /// `status.measuring` is reported once after a forced-mode trigger.
    measuring_reads_left: u8,
}

impl SimBmp280 {
    fn new(calibration: bmp280::Calibration) -> Self {
        let mut regs = [0u8; 256];
        regs[bmp280::reg::CALIB00 as usize..bmp280::reg::CALIB00 as usize + 24]
            .copy_from_slice(&calibration.to_bytes());
        regs[bmp280::reg::ID as usize] = bmp280::CHIP_ID;
        // Data registers read 0x80000 until the first conversion (datasheet Table 18).
        regs[0xF7..=0xFC].copy_from_slice(&[0x80, 0x00, 0x00, 0x80, 0x00, 0x00]);
        SimBmp280 {
            regs,
            pointer: 0,
            calibration,
            measuring_reads_left: 0,
        }
    }

    fn convert(&mut self, env: &Environment) {
        let ctrl = self.regs[bmp280::reg::CTRL_MEAS as usize];
        let osrs_t = ctrl >> 5;
        let osrs_p = (ctrl >> 2) & 0b111;
        let adc_t = if osrs_t == 0 {
            0x80000
        } else {
            self.calibration.adc_t_for(env.temperature_c)
        };
        let (_, t_fine) = self
            .calibration
            .compensate_temperature(self.calibration.adc_t_for(env.temperature_c));
        let adc_p = if osrs_p == 0 {
            0x80000
        } else {
            self.calibration.adc_p_for(env.pressure_pa, t_fine)
        };
        let put = |regs: &mut [u8; 256], at: usize, v: i32| {
            regs[at] = (v >> 12) as u8;
            regs[at + 1] = (v >> 4) as u8;
            regs[at + 2] = ((v & 0xF) << 4) as u8;
        };
        put(&mut self.regs, bmp280::reg::PRESS_MSB as usize, adc_p);
        put(&mut self.regs, bmp280::reg::TEMP_MSB as usize, adc_t);
    }

    fn write(&mut self, bytes: &[u8], env: &Environment) -> Result<(), SimBusError> {
        let Some((&first, rest)) = bytes.split_first() else {
            return Ok(());
        };
        self.pointer = first;
        if rest.is_empty() {
            return Ok(());
        }
        // Multi-byte writes are register/data pairs (datasheet §5.2.1), not auto-increment.
        let mut pairs = Vec::with_capacity(bytes.len() / 2);
        pairs.push((first, rest[0]));
        for pair in rest[1..].chunks(2) {
            if pair.len() != 2 {
                return Err(nack_data());
            }
            pairs.push((pair[0], pair[1]));
        }
        for (register, value) in pairs {
            match register {
                bmp280::reg::RESET if value == bmp280::RESET_WORD => {
                    *self = SimBmp280::new(self.calibration);
                }
                bmp280::reg::CTRL_MEAS => {
                    self.regs[register as usize] = value;
                    match value & 0b11 {
                        0b01 | 0b10 => {
                            self.convert(env);
                            self.measuring_reads_left = 1;
                            // Forced mode falls back to sleep after the conversion.
                            self.regs[register as usize] = value & !0b11;
                        }
                        0b11 => self.convert(env),
                        _ => {}
                    }
                }
                bmp280::reg::CONFIG => self.regs[register as usize] = value,
                // Everything else is read-only and ignores writes.
                _ => {}
            }
        }
        Ok(())
    }

    fn read(&mut self, buf: &mut [u8], env: &Environment) -> Result<(), SimBusError> {
        // In normal mode every read sees a fresh conversion.
        if self.regs[bmp280::reg::CTRL_MEAS as usize] & 0b11 == 0b11 {
            self.convert(env);
        }
        for b in buf.iter_mut() {
            *b = if self.pointer == bmp280::reg::STATUS {
                if self.measuring_reads_left > 0 {
                    self.measuring_reads_left -= 1;
                    bmp280::STATUS_MEASURING
                } else {
                    0
                }
            } else {
                self.regs[self.pointer as usize]
            };
            self.pointer = self.pointer.wrapping_add(1);
        }
        Ok(())
    }
}

/// Simulated MAX17048.
#[derive(Debug, Clone, Default)]
struct SimMax17048 {
    pointer: u8,
}

impl SimMax17048 {
    fn read(&mut self, buf: &mut [u8], env: &Environment) -> Result<(), SimBusError> {
        let mut bytes = Vec::with_capacity(buf.len() + 2);
        let mut reg = self.pointer;
        while bytes.len() < buf.len() {
            let word = match reg {
                max17048::reg::VCELL => max17048::volts_to_raw(env.battery_v),
                max17048::reg::SOC => max17048::percent_to_raw(env.battery_pct),
                max17048::reg::VERSION => 0x0012,
                _ => 0,
            };
            bytes.extend_from_slice(&word.to_be_bytes());
            reg = reg.wrapping_add(2);
        }
        buf.copy_from_slice(&bytes[..buf.len()]);
        Ok(())
    }
}

/// A simulated I2C bus with an SHT3x, a BMP280 and a MAX17048 on it.
#[derive(Debug, Clone)]
pub struct SimBus {
    env: Environment,
    sht3x: SimSht3x,
    bmp280: SimBmp280,
    gauge: SimMax17048,
    /// Number of transactions served, for tests.
    transactions: u64,
}

impl Default for SimBus {
    fn default() -> Self {
        SimBus::new(Environment::default())
    }
}

impl SimBus {
    /// A bus whose chips measure `env`; the BMP280 carries the datasheet example trimming.
    pub fn new(env: Environment) -> Self {
        SimBus {
            env,
            sht3x: SimSht3x::new(),
            bmp280: SimBmp280::new(bmp280::Calibration::DATASHEET_EXAMPLE),
            gauge: SimMax17048::default(),
            transactions: 0,
        }
    }

    /// Change what the chips measure from now on.
    pub fn set_environment(&mut self, env: Environment) {
        self.env = env;
    }

    /// What the chips measure.
    pub fn environment(&self) -> Environment {
        self.env
    }

    /// Transactions served so far.
    pub fn transactions(&self) -> u64 {
        self.transactions
    }

    /// Raw BMP280 register (for tests and debugging).
    pub fn bmp280_register(&self, register: u8) -> u8 {
        self.bmp280.regs[register as usize]
    }
}

impl i2c::ErrorType for SimBus {
    type Error = SimBusError;
}

impl i2c::I2c<SevenBitAddress> for SimBus {
    fn transaction(
        &mut self,
        address: SevenBitAddress,
        operations: &mut [Operation<'_>],
    ) -> Result<(), Self::Error> {
        self.transactions += 1;
        let env = self.env;
        for op in operations.iter_mut() {
            match (address, op) {
                (sht3x::ADDRESS_LOW, Operation::Write(bytes)) => self.sht3x.write(bytes, &env)?,
                (sht3x::ADDRESS_LOW, Operation::Read(buf)) => self.sht3x.read(buf)?,
                (bmp280::ADDRESS_PRIMARY, Operation::Write(bytes)) => {
                    self.bmp280.write(bytes, &env)?
                }
                (bmp280::ADDRESS_PRIMARY, Operation::Read(buf)) => self.bmp280.read(buf, &env)?,
                (max17048::ADDRESS, Operation::Write(bytes)) => {
                    if let Some(&first) = bytes.first() {
                        self.gauge.pointer = first;
                    }
                }
                (max17048::ADDRESS, Operation::Read(buf)) => self.gauge.read(buf, &env)?,
                _ => return Err(nack_address()),
            }
        }
        Ok(())
    }
}

/// A delay that returns at once: the simulated chips convert instantly.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoDelay;

impl embedded_hal::delay::DelayNs for NoDelay {
    fn delay_ns(&mut self, _ns: u32) {}
}
