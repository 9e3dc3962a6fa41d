//! Bosch BMP280 digital pressure sensor.
//!
//! Follows the *BMP280 datasheet* (BST-BMP280-DS001): the memory map of §4.2, the trimming
//! parameters of §3.11.2 (little-endian words at 0x88..0x9F), and the integer compensation
//! formulas of §3.11.3 (temperature with 32-bit, pressure with 64-bit arithmetic). The
//! datasheet's worked example (dig_T1 = 27504, dig_T2 = 26435, dig_T3 = -1000, adc_T = 519888)
//! gives T = 25.08 °C and, with its pressure trimming values and adc_P = 415148,
//! P = 100653.27 Pa; the tests check both.

use embedded_hal::delay::DelayNs;
use embedded_hal::i2c::I2c;

use super::DriverError;

/// I2C address with SDO low.
pub const ADDRESS_PRIMARY: u8 = 0x76;
/// I2C address with SDO high.
pub const ADDRESS_SECONDARY: u8 = 0x77;
/// Content of the `id` register for a BMP280.
pub const CHIP_ID: u8 = 0x58;
/// Writing this to `reset` performs a power-on reset.
pub const RESET_WORD: u8 = 0xB6;

/// Register addresses (datasheet Table 18).
pub mod reg {
    /// First trimming register (`dig_T1` LSB); 24 bytes up to 0x9F.
    pub const CALIB00: u8 = 0x88;
    /// Chip id, reads 0x58.
    pub const ID: u8 = 0xD0;
    /// Write 0xB6 to reset.
    pub const RESET: u8 = 0xE0;
    /// Status: bit 3 `measuring`, bit 0 `im_update`.
    pub const STATUS: u8 = 0xF3;
    /// `osrs_t[7:5] osrs_p[4:2] mode[1:0]`.
    pub const CTRL_MEAS: u8 = 0xF4;
    /// `t_sb[7:5] filter[4:2] spi3w_en[0]`.
    pub const CONFIG: u8 = 0xF5;
    /// Pressure MSB; the burst read 0xF7..0xFC gives pressure then temperature, 20 bits each.
    pub const PRESS_MSB: u8 = 0xF7;
    /// Temperature MSB.
    pub const TEMP_MSB: u8 = 0xFA;
}

/// Status bit: a conversion is running.
pub const STATUS_MEASURING: u8 = 1 << 3;

/// Power mode bits of `ctrl_meas`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// No measurements.
    Sleep = 0b00,
    /// One measurement, then back to sleep.
    Forced = 0b01,
    /// Periodic measurements.
    Normal = 0b11,
}

/// Oversampling setting for `osrs_t` / `osrs_p` (datasheet Tables 21 and 22).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Oversampling {
    /// Measurement skipped; the output register holds 0x80000.
    Skip = 0,
    /// ×1.
    X1 = 1,
    /// ×2.
    X2 = 2,
    /// ×4.
    X4 = 3,
    /// ×8.
    X8 = 4,
    /// ×16.
    X16 = 5,
}

/// Encode `ctrl_meas`.
pub fn ctrl_meas(osrs_t: Oversampling, osrs_p: Oversampling, mode: Mode) -> u8 {
    ((osrs_t as u8) << 5) | ((osrs_p as u8) << 2) | mode as u8
}

/// Trimming parameters read from 0x88..0x9F.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct Calibration {
    pub dig_t1: u16,
    pub dig_t2: i16,
    pub dig_t3: i16,
    pub dig_p1: u16,
    pub dig_p2: i16,
    pub dig_p3: i16,
    pub dig_p4: i16,
    pub dig_p5: i16,
    pub dig_p6: i16,
    pub dig_p7: i16,
    pub dig_p8: i16,
    pub dig_p9: i16,
}

impl Calibration {
    /// The trimming values of the datasheet's compensation example (§3.12, Table 16 of some
    /// revisions); the simulated chip reports these.
    pub const DATASHEET_EXAMPLE: Calibration = Calibration {
        dig_t1: 27504,
        dig_t2: 26435,
        dig_t3: -1000,
        dig_p1: 36477,
        dig_p2: -10685,
        dig_p3: 3024,
        dig_p4: 2855,
        dig_p5: 140,
        dig_p6: -7,
        dig_p7: 15500,
        dig_p8: -14600,
        dig_p9: 6000,
    };

    /// Decode the 24 trimming bytes (little-endian words, datasheet Table 17).
    pub fn from_bytes(b: &[u8; 24]) -> Calibration {
        let u = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        let s = |i: usize| i16::from_le_bytes([b[i], b[i + 1]]);
        Calibration {
            dig_t1: u(0),
            dig_t2: s(2),
            dig_t3: s(4),
            dig_p1: u(6),
            dig_p2: s(8),
            dig_p3: s(10),
            dig_p4: s(12),
            dig_p5: s(14),
            dig_p6: s(16),
            dig_p7: s(18),
            dig_p8: s(20),
            dig_p9: s(22),
        }
    }

    /// Encode as the 24 bytes a chip holds at 0x88..0x9F.
    pub fn to_bytes(&self) -> [u8; 24] {
        let words: [[u8; 2]; 12] = [
            self.dig_t1.to_le_bytes(),
            self.dig_t2.to_le_bytes(),
            self.dig_t3.to_le_bytes(),
            self.dig_p1.to_le_bytes(),
            self.dig_p2.to_le_bytes(),
            self.dig_p3.to_le_bytes(),
            self.dig_p4.to_le_bytes(),
            self.dig_p5.to_le_bytes(),
            self.dig_p6.to_le_bytes(),
            self.dig_p7.to_le_bytes(),
            self.dig_p8.to_le_bytes(),
            self.dig_p9.to_le_bytes(),
        ];
        let mut out = [0u8; 24];
        for (i, w) in words.iter().enumerate() {
            out[2 * i] = w[0];
            out[2 * i + 1] = w[1];
        }
        out
    }

    /// `bmp280_compensate_T_int32`: returns (temperature in 0.01 °C, `t_fine`).
    pub fn compensate_temperature(&self, adc_t: i32) -> (i32, i32) {
        let t1 = i32::from(self.dig_t1);
        let t2 = i32::from(self.dig_t2);
        let t3 = i32::from(self.dig_t3);
        let var1 = (((adc_t >> 3) - (t1 << 1)) * t2) >> 11;
        let var2 = (((((adc_t >> 4) - t1) * ((adc_t >> 4) - t1)) >> 12) * t3) >> 14;
        let t_fine = var1 + var2;
        ((t_fine * 5 + 128) >> 8, t_fine)
    }

    /// `bmp280_compensate_P_int64`: pressure in Pa as unsigned Q24.8 (divide by 256).
    pub fn compensate_pressure(&self, adc_p: i32, t_fine: i32) -> u32 {
        let mut var1: i64 = i64::from(t_fine) - 128_000;
        let mut var2: i64 = var1 * var1 * i64::from(self.dig_p6);
        var2 += (var1 * i64::from(self.dig_p5)) << 17;
        var2 += i64::from(self.dig_p4) << 35;
        var1 =
            ((var1 * var1 * i64::from(self.dig_p3)) >> 8) + ((var1 * i64::from(self.dig_p2)) << 12);
        var1 = (((1i64 << 47) + var1) * i64::from(self.dig_p1)) >> 33;
        if var1 == 0 {
            // Avoid a division by zero, as the datasheet does.
            return 0;
        }
        let mut p: i64 = 1_048_576 - i64::from(adc_p);
        p = (((p << 31) - var2) * 3125) / var1;
        var1 = (i64::from(self.dig_p9) * (p >> 13) * (p >> 13)) >> 25;
        var2 = (i64::from(self.dig_p8) * p) >> 19;
        p = ((p + var1 + var2) >> 8) + (i64::from(self.dig_p7) << 4);
        p as u32
    }

    /// Temperature (°C) and pressure (Pa) from raw 20-bit ADC values.
    pub fn compensate(&self, adc_t: i32, adc_p: i32) -> Measurement {
        let (t, t_fine) = self.compensate_temperature(adc_t);
        let p = self.compensate_pressure(adc_p, t_fine);
        Measurement {
            temperature_c: f64::from(t) / 100.0,
            pressure_pa: f64::from(p) / 256.0,
        }
    }

    /// The raw `adc_T` whose compensated value is closest to `celsius` (used by the simulated
    /// chip; the formula is monotonic in `adc_T`, so a binary search over 20 bits finds it).
    pub fn adc_t_for(&self, celsius: f64) -> i32 {
        let target = (celsius * 100.0).round() as i32;
        let (mut lo, mut hi) = (0i32, (1 << 20) - 1);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if self.compensate_temperature(mid).0 < target {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo
    }

    /// The raw `adc_P` whose compensated value is closest to `pascal` at temperature `t_fine`
    /// (pressure falls as `adc_P` rises).
    pub fn adc_p_for(&self, pascal: f64, t_fine: i32) -> i32 {
        let target = (pascal * 256.0).round() as i64;
        let (mut lo, mut hi) = (0i32, (1 << 20) - 1);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if i64::from(self.compensate_pressure(mid, t_fine)) > target {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo
    }
}

/// One converted measurement.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Measurement {
    /// Temperature in °C (0.01 °C resolution).
    pub temperature_c: f64,
    /// Pressure in Pa (1/256 Pa resolution).
    pub pressure_pa: f64,
}

/// Driver for one BMP280 on an I2C bus.
#[derive(Debug)]
pub struct Bmp280<I2C> {
    i2c: I2C,
    address: u8,
    calibration: Calibration,
}

impl<I2C: I2c> Bmp280<I2C> {
    /// Check the chip id and read the trimming parameters.
    pub fn new(mut i2c: I2C, address: u8) -> Result<Self, DriverError<I2C::Error>> {
        let mut id = [0u8];
        i2c.write_read(address, &[reg::ID], &mut id)
            .map_err(DriverError::I2c)?;
        if id[0] != CHIP_ID {
            return Err(DriverError::WrongChipId {
                expected: CHIP_ID,
                found: id[0],
            });
        }
        let mut calib = [0u8; 24];
        i2c.write_read(address, &[reg::CALIB00], &mut calib)
            .map_err(DriverError::I2c)?;
        Ok(Bmp280 {
            i2c,
            address,
            calibration: Calibration::from_bytes(&calib),
        })
    }

    /// A driver for a chip whose trimming parameters were read before (skips two transactions).
    pub fn with_calibration(i2c: I2C, address: u8, calibration: Calibration) -> Self {
        Bmp280 {
            i2c,
            address,
            calibration,
        }
    }

    /// The trimming parameters in use.
    pub fn calibration(&self) -> Calibration {
        self.calibration
    }

    /// Give the bus back.
    pub fn release(self) -> I2C {
        self.i2c
    }

    fn write_register(&mut self, register: u8, value: u8) -> Result<(), DriverError<I2C::Error>> {
        self.i2c
            .write(self.address, &[register, value])
            .map_err(DriverError::I2c)
    }

    fn read_register(&mut self, register: u8) -> Result<u8, DriverError<I2C::Error>> {
        let mut v = [0u8];
        self.i2c
            .write_read(self.address, &[register], &mut v)
            .map_err(DriverError::I2c)?;
        Ok(v[0])
    }

    /// Power-on reset via the `reset` register; the chip needs 2 ms to start up.
    pub fn reset(&mut self, delay: &mut impl DelayNs) -> Result<(), DriverError<I2C::Error>> {
        self.write_register(reg::RESET, RESET_WORD)?;
        delay.delay_ms(2);
        Ok(())
    }

    /// Write `config` (standby time, IIR filter).
    pub fn set_config(&mut self, config: u8) -> Result<(), DriverError<I2C::Error>> {
        self.write_register(reg::CONFIG, config)
    }

    /// Read `ctrl_meas`.
    pub fn ctrl_meas(&mut self) -> Result<u8, DriverError<I2C::Error>> {
        self.read_register(reg::CTRL_MEAS)
    }

    /// Read `status`.
    pub fn status(&mut self) -> Result<u8, DriverError<I2C::Error>> {
        self.read_register(reg::STATUS)
    }

    /// Read the raw 20-bit `(adc_T, adc_P)` with one burst read of 0xF7..0xFC, as the datasheet
    /// recommends so both belong to the same conversion.
    pub fn read_raw(&mut self) -> Result<(i32, i32), DriverError<I2C::Error>> {
        let mut d = [0u8; 6];
        self.i2c
            .write_read(self.address, &[reg::PRESS_MSB], &mut d)
            .map_err(DriverError::I2c)?;
        let adc_p = (i32::from(d[0]) << 12) | (i32::from(d[1]) << 4) | (i32::from(d[2]) >> 4);
        let adc_t = (i32::from(d[3]) << 12) | (i32::from(d[4]) << 4) | (i32::from(d[5]) >> 4);
        Ok((adc_t, adc_p))
    }

    /// One forced-mode measurement: write `ctrl_meas`, poll `status.measuring` (up to 50 ms, far
    /// above the 43.2 ms maximum of ×16/×16 in Table 13), burst-read and compensate.
    pub fn measure_forced(
        &mut self,
        osrs_t: Oversampling,
        osrs_p: Oversampling,
        delay: &mut impl DelayNs,
    ) -> Result<Measurement, DriverError<I2C::Error>> {
        self.write_register(reg::CTRL_MEAS, ctrl_meas(osrs_t, osrs_p, Mode::Forced))?;
        let mut waited_ms = 0;
        while self.status()? & STATUS_MEASURING != 0 {
            if waited_ms >= 50 {
                return Err(DriverError::Timeout);
            }
            delay.delay_ms(1);
            waited_ms += 1;
        }
        let (adc_t, adc_p) = self.read_raw()?;
        Ok(self.calibration.compensate(adc_t, adc_p))
    }
}
