//! The simulated slaves, pure: the units, their live readings, the faults, and exact counts.
//! [`Slaves::handle`] decides the reply to one request; the server loops only frame it.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::fault::{Fault, FaultKind};
use super::frame::{Exception, Frame, exception, parse_request};
use super::map::{self, INPUT_REGISTERS, Readings, UnitView};
use crate::device::{DeviceConfig, DeviceSim};
use crate::metric::Metric;

/// What to send back for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// Nothing: a `silent` fault, or (RTU) a unit not on the bus.
    Nothing,
    /// This PDU; `corrupt` asks the framing to spoil it (bad CRC, bad MBAP protocol id).
    Pdu {
        /// Answer or exception PDU.
        pdu: Vec<u8>,
        /// Spoil the frame.
        corrupt: bool,
    },
}

/// How the transport treats a unit id that is not served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unserved {
    /// A bus: nobody answers.
    Ignore,
    /// A TCP gateway: exception 0x0B.
    GatewayTargetFailed,
}

/// Counts of one unit, in the summary JSON.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnitCounts {
    /// Unit id.
    pub unit: u8,
    /// Requests addressed to the unit.
    pub requests: u64,
    /// Normal answers sent, corrupted ones included.
    pub answered: u64,
    /// Exception answers sent (protocol errors and `exception` faults).
    pub exceptions: u64,
    /// Requests not answered because of a `silent` fault.
    pub unanswered: u64,
    /// Normal answers sent corrupted.
    pub corrupted: u64,
}

struct Unit {
    sim: DeviceSim,
    input: [u16; INPUT_REGISTERS as usize],
    counts: UnitCounts,
    /// Per fault: normal answers sent while its window was open (for `corrupt`'s K).
    answers_in_window: Vec<u64>,
}

impl std::fmt::Debug for Unit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Unit")
            .field("counts", &self.counts)
            .finish_non_exhaustive()
    }
}

impl Unit {
    fn sample(&mut self) {
        let tick = self.sim.next_tick();
        let get = |m: Metric| {
            tick.readings
                .iter()
                .find(|(x, _)| *x == m)
                .map_or(0.0, |r| r.1)
        };
        self.input = map::input_registers(&Readings {
            temperature_c: get(Metric::Temperature),
            humidity_pct: get(Metric::Humidity),
            pressure_hpa: get(Metric::Pressure),
            battery_pct: get(Metric::Battery),
        });
    }
}

/// Settings of the simulated units.
#[derive(Debug, Clone)]
pub struct UnitsConfig {
    /// First unit id, 1..=247.
    pub first_unit: u8,
    /// Number of units; the last id is at most 247.
    pub devices: u8,
    /// Reading sets per second.
    pub rate_hz: f64,
    /// Seed of the signal models.
    pub seed: u64,
    /// Timestamp (ms since the epoch) of the first reading set.
    pub start_ts_ms: i64,
    /// Faults, in the order given.
    pub faults: Vec<Fault>,
}

/// The slaves behind one transport.
#[derive(Debug)]
pub struct Slaves {
    first_unit: u8,
    units: Vec<Unit>,
    faults: Vec<Fault>,
    other_unit_requests: u64,
}

impl Slaves {
    /// The units of `cfg`, each with a first reading set taken.
    pub fn new(cfg: &UnitsConfig) -> Slaves {
        let units = (0..cfg.devices)
            .map(|i| {
                let id = cfg.first_unit + i;
                let mut unit = Unit {
                    sim: DeviceSim::new(DeviceConfig {
                        index: u32::from(id),
                        rate_hz: cfg.rate_hz,
                        metrics: Metric::ALL.to_vec(),
                        seed: cfg.seed,
                        start_ts_ms: cfg.start_ts_ms,
                        scenarios: Arc::new(Vec::new()),
                    }),
                    input: [0; INPUT_REGISTERS as usize],
                    counts: UnitCounts {
                        unit: id,
                        ..UnitCounts::default()
                    },
                    answers_in_window: vec![0; cfg.faults.len()],
                };
                unit.sample();
                unit
            })
            .collect();
        Slaves {
            first_unit: cfg.first_unit,
            units,
            faults: cfg.faults.clone(),
            other_unit_requests: 0,
        }
    }

    /// Take the next reading set of every unit (through the drivers and the simulated bus).
    pub fn sample(&mut self) {
        for u in &mut self.units {
            u.sample();
        }
    }

    /// The reply to `frame`, received `elapsed_ms` after the start.
    pub fn handle(&mut self, frame: &Frame, elapsed_ms: u64, unserved: Unserved) -> Reply {
        let slot = usize::from(frame.unit.wrapping_sub(self.first_unit));
        let Some(unit) = self
            .units
            .get_mut(slot)
            .filter(|_| frame.unit >= self.first_unit)
        else {
            self.other_unit_requests += 1;
            return match unserved {
                Unserved::Ignore => Reply::Nothing,
                Unserved::GatewayTargetFailed => Reply::Pdu {
                    pdu: exception_pdu(frame, exception::GATEWAY_TARGET_FAILED),
                    corrupt: false,
                },
            };
        };
        unit.counts.requests += 1;
        let active: Vec<(usize, FaultKind)> = self
            .faults
            .iter()
            .enumerate()
            .filter(|(_, f)| f.active(frame.unit, elapsed_ms))
            .map(|(i, f)| (i, f.kind))
            .collect();
        if active.iter().any(|(_, k)| *k == FaultKind::Silent) {
            unit.counts.unanswered += 1;
            return Reply::Nothing;
        }
        let forced = active.iter().find_map(|(_, k)| match k {
            FaultKind::Exception { code } => Some(*code),
            _ => None,
        });
        let answer = match forced {
            Some(code) => Err(code),
            None => parse_request(&frame.pdu)
                .and_then(|req| {
                    let view = UnitView {
                        unit: frame.unit,
                        answered: unit.counts.answered,
                        input: &unit.input,
                    };
                    map::answer(view, req)
                })
                .map_err(|e| e.code),
        };
        match answer {
            Err(code) => {
                unit.counts.exceptions += 1;
                Reply::Pdu {
                    pdu: exception_pdu(frame, code),
                    corrupt: false,
                }
            }
            Ok(pdu) => {
                unit.counts.answered += 1;
                let mut corrupt = false;
                for (i, kind) in &active {
                    if let FaultKind::Corrupt { every } = kind {
                        unit.answers_in_window[*i] += 1;
                        corrupt |= unit.answers_in_window[*i].is_multiple_of(*every);
                    }
                }
                unit.counts.corrupted += u64::from(corrupt);
                Reply::Pdu { pdu, corrupt }
            }
        }
    }

    /// Counts per unit, in unit order.
    pub fn counts(&self) -> Vec<UnitCounts> {
        self.units.iter().map(|u| u.counts).collect()
    }

    /// Requests for unit ids not served.
    pub fn other_unit_requests(&self) -> u64 {
        self.other_unit_requests
    }
}

/// The exception PDU answering `frame` with `code`.
fn exception_pdu(frame: &Frame, code: u8) -> Vec<u8> {
    Exception {
        function: frame.pdu.first().copied().unwrap_or(0) & 0x7F,
        code,
    }
    .pdu()
    .to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::modbus::frame::{ReadRequest, Table, request_pdu};

    fn slaves(faults: &[&str]) -> Slaves {
        Slaves::new(&UnitsConfig {
            first_unit: 3,
            devices: 2,
            rate_hz: 1.0,
            seed: 1,
            start_ts_ms: 1_764_081_600_000,
            faults: faults.iter().map(|f| f.parse().unwrap()).collect(),
        })
    }

    fn read(unit: u8, table: Table, address: u16, quantity: u16) -> Frame {
        Frame {
            unit,
            pdu: request_pdu(ReadRequest {
                table,
                address,
                quantity,
            })
            .to_vec(),
        }
    }

    fn holding(unit: u8) -> Frame {
        read(unit, Table::HoldingRegisters, 14, 2)
    }

    #[test]
    fn units_answer_their_own_id_and_count_their_answers() {
        let mut s = slaves(&[]);
        for n in 0..3u8 {
            let reply = s.handle(&holding(4), 0, Unserved::Ignore);
            assert_eq!(
                reply,
                Reply::Pdu {
                    pdu: vec![0x03, 4, 0, 4, 0, n],
                    corrupt: false
                }
            );
        }
        assert_eq!(
            s.counts()[1],
            UnitCounts {
                unit: 4,
                requests: 3,
                answered: 3,
                ..UnitCounts::default()
            }
        );
    }

    #[test]
    fn unserved_units_are_ignored_on_a_bus_and_refused_on_tcp() {
        let mut s = slaves(&[]);
        for unit in [0, 2, 5, 255] {
            assert_eq!(
                s.handle(&holding(unit), 0, Unserved::Ignore),
                Reply::Nothing
            );
            assert_eq!(
                s.handle(&holding(unit), 0, Unserved::GatewayTargetFailed),
                Reply::Pdu {
                    pdu: vec![0x83, 0x0B],
                    corrupt: false
                }
            );
        }
        assert_eq!(s.other_unit_requests(), 8);
        assert!(s.counts().iter().all(|c| c.requests == 0));
    }

    #[test]
    fn protocol_errors_are_exceptions() {
        let mut s = slaves(&[]);
        let cases = [
            (read(3, Table::InputRegisters, 0, 15), vec![0x84, 2]),
            (read(3, Table::Coils, 0, 0), vec![0x81, 3]),
            (
                Frame {
                    unit: 3,
                    pdu: vec![0x06, 0, 0, 0, 1],
                },
                vec![0x86, 1],
            ),
        ];
        for (frame, want) in cases {
            assert_eq!(
                s.handle(&frame, 0, Unserved::Ignore),
                Reply::Pdu {
                    pdu: want,
                    corrupt: false
                }
            );
        }
        assert_eq!((s.counts()[0].requests, s.counts()[0].exceptions), (3, 3));
    }

    #[test]
    fn faults_apply_in_their_windows_with_silent_first() {
        let mut s = slaves(&[
            "corrupt:unit=3,every=2",
            "exception:unit=all,code=6,at=10s,for=10s",
            "silent:unit=3,at=15s,for=10s",
        ]);
        let mut replies = Vec::new();
        for t in [0, 1, 2, 3, 10_000, 15_000, 24_999, 25_000, 26_000] {
            replies.push(s.handle(&holding(3), t, Unserved::Ignore));
        }
        let normal = |n: u8, corrupt| Reply::Pdu {
            pdu: vec![0x03, 4, 0, 3, 0, n],
            corrupt,
        };
        let busy = Reply::Pdu {
            pdu: vec![0x83, 6],
            corrupt: false,
        };
        assert_eq!(
            replies,
            [
                normal(0, false),
                normal(1, true),
                normal(2, false),
                normal(3, true),
                busy.clone(),
                Reply::Nothing,
                Reply::Nothing,
                normal(4, false),
                normal(5, true),
            ]
        );
        assert_eq!(
            s.counts()[0],
            UnitCounts {
                unit: 3,
                requests: 9,
                answered: 6,
                exceptions: 1,
                unanswered: 2,
                corrupted: 3,
            }
        );
        // Unit 4 only sees the exception window.
        assert_eq!(s.handle(&holding(4), 12_000, Unserved::Ignore), busy);
        assert_eq!(
            s.handle(&holding(4), 20_000, Unserved::Ignore),
            Reply::Pdu {
                pdu: vec![0x03, 4, 0, 4, 0, 0],
                corrupt: false
            }
        );
    }

    #[test]
    fn input_registers_follow_the_samples() {
        let mut s = slaves(&[]);
        let reg = |s: &mut Slaves| match s.handle(
            &read(3, Table::InputRegisters, 0, 14),
            0,
            Unserved::Ignore,
        ) {
            Reply::Pdu { pdu, .. } => pdu,
            Reply::Nothing => panic!("no answer"),
        };
        let first = reg(&mut s);
        let temp = f32::from_be_bytes([first[2], first[3], first[4], first[5]]);
        assert!((10.0..35.0).contains(&temp), "{temp}");
        let changed = (0..20).any(|_| {
            s.sample();
            reg(&mut s) != first
        });
        assert!(changed, "live values move with the samples");
    }
}
