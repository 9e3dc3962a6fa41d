//! The drivers against the simulated bus: register protocol and datasheet conversions.

use device_sim::bus::{Environment, NoDelay, SimBus, SimBusError};
use device_sim::drivers::DriverError;
use device_sim::drivers::bmp280::{self, Bmp280, Calibration, Oversampling};
use device_sim::drivers::max17048::{self, Max17048};
use device_sim::drivers::sht3x::{self, Repeatability, Sht3x};
use embedded_hal::i2c::{ErrorKind, ErrorType, I2c, NoAcknowledgeSource, Operation};

fn env(t: f64, rh: f64, p_pa: f64) -> Environment {
    Environment {
        temperature_c: t,
        humidity_pct: rh,
        pressure_pa: p_pa,
        ..Environment::default()
    }
}

#[test]
fn sht3x_crc_matches_the_datasheet_example() {
    assert_eq!(sht3x::crc8(&[0xBE, 0xEF]), 0x92);
}

#[test]
fn sht3x_conversions_follow_the_datasheet_formulas() {
    assert_eq!(sht3x::temperature_from_raw(0), -45.0);
    assert_eq!(sht3x::temperature_from_raw(0xFFFF), 130.0);
    assert_eq!(sht3x::humidity_from_raw(0xFFFF), 100.0);
    assert!((sht3x::temperature_from_raw(0x6666) - 25.0).abs() < 1e-9);
    assert_eq!(sht3x::temperature_to_raw(-45.0), 0);
    assert_eq!(sht3x::humidity_to_raw(100.0), 0xFFFF);
}

#[test]
fn sht3x_measurement_through_the_simulated_bus_matches_the_environment() {
    let mut bus = SimBus::new(env(23.4, 45.6, 101_325.0));
    let mut sht = Sht3x::new(&mut bus, sht3x::ADDRESS_LOW);
    let m = sht.measure(Repeatability::High, &mut NoDelay).unwrap();
    // One LSB is 175/65535 °C and 100/65535 %RH.
    assert!((m.temperature_c - 23.4).abs() < 0.002, "{m:?}");
    assert!((m.humidity_pct - 45.6).abs() < 0.001, "{m:?}");
}

#[test]
fn sht3x_status_reports_the_reset_then_clears_and_tracks_the_heater() {
    let mut bus = SimBus::default();
    let mut sht = Sht3x::new(&mut bus, sht3x::ADDRESS_LOW);
    assert_ne!(sht.status().unwrap() & sht3x::status::RESET_DETECTED, 0);
    sht.clear_status().unwrap();
    assert_eq!(sht.status().unwrap() & sht3x::status::RESET_DETECTED, 0);
    sht.set_heater(true).unwrap();
    assert_ne!(sht.status().unwrap() & sht3x::status::HEATER_ON, 0);
    sht.soft_reset(&mut NoDelay).unwrap();
    let s = sht.status().unwrap();
    assert_eq!(s & sht3x::status::HEATER_ON, 0);
    assert_ne!(s & sht3x::status::RESET_DETECTED, 0);
}

#[test]
fn sht3x_read_without_a_pending_measurement_is_nacked() {
    let mut bus = SimBus::default();
    let mut sht = Sht3x::new(&mut bus, sht3x::ADDRESS_LOW);
    assert!(matches!(sht.read_measurement(), Err(DriverError::I2c(_))));
}

#[test]
fn bmp280_compensation_reproduces_the_datasheet_example() {
    let c = Calibration::DATASHEET_EXAMPLE;
    let (t, t_fine) = c.compensate_temperature(519_888);
    assert_eq!(t, 2508, "T = 25.08 °C");
    assert_eq!(t_fine, 128_422);
    let p_q24_8 = c.compensate_pressure(415_148, t_fine);
    assert_eq!(p_q24_8 / 256, 100_653, "P = 100653 Pa");
    // The datasheet's 100653.27 Pa comes from its floating-point variant; the 64-bit integer
    // variant lands within 1/256 Pa steps of it (100653.25 Pa).
    let m = c.compensate(519_888, 415_148);
    assert!((m.pressure_pa - 100_653.27).abs() < 0.05, "{m:?}");
    assert_eq!(m.temperature_c, 25.08);
}

#[test]
fn bmp280_calibration_bytes_round_trip_little_endian() {
    let bytes = Calibration::DATASHEET_EXAMPLE.to_bytes();
    // dig_T1 = 27504 = 0x6B70, least significant byte first.
    assert_eq!(&bytes[..2], &[0x70, 0x6B]);
    assert_eq!(
        Calibration::from_bytes(&bytes),
        Calibration::DATASHEET_EXAMPLE
    );
}

#[test]
fn bmp280_reads_chip_id_and_trimming_from_the_simulated_bus() {
    let mut bus = SimBus::default();
    assert_eq!(bus.bmp280_register(bmp280::reg::ID), 0x58);
    let bmp = Bmp280::new(&mut bus, bmp280::ADDRESS_PRIMARY).unwrap();
    assert_eq!(bmp.calibration(), Calibration::DATASHEET_EXAMPLE);
}

#[test]
fn bmp280_forced_measurement_matches_the_environment_and_returns_to_sleep() {
    let mut bus = SimBus::new(env(25.08, 50.0, 100_653.27));
    let mut bmp = Bmp280::new(&mut bus, bmp280::ADDRESS_PRIMARY).unwrap();
    let m = bmp
        .measure_forced(Oversampling::X2, Oversampling::X16, &mut NoDelay)
        .unwrap();
    assert!((m.temperature_c - 25.08).abs() < 0.011, "{m:?}");
    assert!((m.pressure_pa - 100_653.27).abs() < 0.5, "{m:?}");
    // ctrl_meas keeps the oversampling, and the mode bits fall back to sleep.
    assert_eq!(
        bmp.ctrl_meas().unwrap(),
        bmp280::ctrl_meas(Oversampling::X2, Oversampling::X16, bmp280::Mode::Sleep)
    );
}

#[test]
fn bmp280_skipped_pressure_reads_the_reset_value() {
    let mut bus = SimBus::default();
    let mut bmp = Bmp280::new(&mut bus, bmp280::ADDRESS_PRIMARY).unwrap();
    bmp.measure_forced(Oversampling::X1, Oversampling::Skip, &mut NoDelay)
        .unwrap();
    let (_, adc_p) = bmp.read_raw().unwrap();
    assert_eq!(adc_p, 0x80000);
}

#[test]
fn bmp280_reset_restores_power_on_registers() {
    let mut bus = SimBus::default();
    let mut bmp = Bmp280::new(&mut bus, bmp280::ADDRESS_PRIMARY).unwrap();
    bmp.set_config(0b1011_0000).unwrap();
    bmp.measure_forced(Oversampling::X1, Oversampling::X1, &mut NoDelay)
        .unwrap();
    bmp.reset(&mut NoDelay).unwrap();
    let _bus = bmp.release();
    assert_eq!(bus.bmp280_register(bmp280::reg::CONFIG), 0);
    assert_eq!(bus.bmp280_register(bmp280::reg::CTRL_MEAS), 0);
    assert_eq!(bus.bmp280_register(bmp280::reg::PRESS_MSB), 0x80);
}

/// A bus with a BME280 (chip id 0x60) where a BMP280 is expected.
#[derive(Debug)]
struct Bme280Bus;

impl ErrorType for Bme280Bus {
    type Error = SimBusError;
}

impl I2c for Bme280Bus {
    fn transaction(&mut self, _: u8, ops: &mut [Operation<'_>]) -> Result<(), SimBusError> {
        for op in ops {
            if let Operation::Read(buf) = op {
                buf.fill(0x60);
            }
        }
        Ok(())
    }
}

#[test]
fn bmp280_driver_rejects_a_different_chip_id() {
    let err = Bmp280::new(Bme280Bus, bmp280::ADDRESS_PRIMARY).unwrap_err();
    assert_eq!(
        err,
        DriverError::WrongChipId {
            expected: 0x58,
            found: 0x60
        }
    );
    assert!(!err.is_retryable());
}

#[test]
fn max17048_reports_cell_voltage_and_state_of_charge() {
    let mut bus = SimBus::new(Environment {
        battery_v: 3.7,
        battery_pct: 42.5,
        ..Environment::default()
    });
    let mut g = Max17048::new(&mut bus);
    assert!((g.voltage().unwrap() - 3.7).abs() < 78.125e-6);
    assert_eq!(g.state_of_charge().unwrap(), 42.5);
    assert_eq!(g.version().unwrap(), 0x0012);
    assert_eq!(max17048::volts_from_raw(0xFFFF), 65535.0 * 78.125e-6);
}

#[test]
fn an_absent_address_is_nacked_like_a_real_bus() {
    let mut bus = SimBus::default();
    let err = bus.write(0x10, &[0x00]).unwrap_err();
    assert_eq!(
        embedded_hal::i2c::Error::kind(&err),
        ErrorKind::NoAcknowledge(NoAcknowledgeSource::Address)
    );
    let mut sht = Sht3x::new(&mut bus, sht3x::ADDRESS_HIGH);
    assert!(matches!(
        sht.measure(Repeatability::Low, &mut NoDelay),
        Err(DriverError::I2c(_))
    ));
}
