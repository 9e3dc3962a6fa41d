//! `[[modbus]]`: what loads and what is refused, each refusal naming the key and its line.

use gateway_config::{
    Config, ConfigError, DataType, ModbusLink, MqttMode, Parity, RegisterKind, RegisterValue,
    WordOrder,
};
use std::path::PathBuf;

fn no_env(_: &str) -> Option<String> {
    None
}

fn parse(text: &str) -> Config {
    Config::parse_with_env(text, "test.toml", no_env).unwrap_or_else(|e| panic!("{e}"))
}

/// Asserts the message starts with `key (line N): ` and contains `fragment`.
#[track_caller]
fn assert_refused(text: &str, key: &str, line: usize, fragment: &str) -> ConfigError {
    let err = match Config::parse_with_env(text, "test.toml", no_env) {
        Ok(config) => panic!("accepted:\n{text}\nas {:#?}", config.modbus),
        Err(e) => e,
    };
    let message = err.to_string();
    let head = format!("{key} (line {line}): ");
    assert!(
        message.starts_with(&head),
        "expected {head:?}, got {message:?}"
    );
    assert!(
        message.contains(fragment),
        "expected {fragment:?} in {message:?}"
    );
    err
}

/// A TCP slave `meter` with one holding register, then `extra` lines in its register table.
fn tcp_with_register(extra: &str) -> String {
    format!(
        "[[modbus]]\ndevice = \"meter\"\nurl = \"tcp://10.0.0.5\"\n[[modbus.register]]\n\
         metric = \"m\"\naddress = 0\n{extra}"
    )
}

#[test]
fn a_minimal_tcp_slave_gets_every_default() {
    let config = parse(&tcp_with_register(""));
    let [slave] = &config.modbus[..] else {
        panic!()
    };
    assert_eq!(
        slave.link,
        ModbusLink::Tcp {
            host: "10.0.0.5".into(),
            port: 502
        }
    );
    assert_eq!(
        (
            slave.unit_id,
            slave.poll_ms,
            slave.timeout_ms,
            slave.backoff_max_ms
        ),
        (1, 1000, 500, 30_000)
    );
    let r = &slave.registers[0];
    assert_eq!(r.kind, RegisterKind::Holding);
    assert_eq!(r.value, RegisterValue::Word(DataType::U16));
    assert_eq!((r.scale, r.offset, r.unit.as_deref()), (1.0, 0.0, None));
}

#[test]
fn rtu_slaves_read_their_line_settings_and_share_a_port() {
    let text = "[mqtt]\nmode = \"disabled\"\n\
        [[modbus]]\ndevice = \"a\"\nurl = \"rtu:///dev/ttyUSB0\"\nbaud = 19200\nparity = \"even\"\nunit_id = 7\n\
        [[modbus.register]]\nmetric = \"t\"\nkind = \"input\"\naddress = 65534\ntype = \"i32\"\nword_order = \"little\"\nscale = 0.5\noffset = -3\nunit = \"Cel\"\n\
        [[modbus.register]]\nmetric = \"on\"\nkind = \"discrete\"\naddress = 65535\n\
        [[modbus]]\ndevice = \"b\"\nurl = \"rtu:///dev/ttyUSB0\"\nbaud = 19200\nparity = \"even\"\nunit_id = 8\n\
        [[modbus.register]]\nmetric = \"t\"\naddress = 1\n";
    let config = parse(text);
    assert_eq!(
        config.mqtt.mode,
        MqttMode::Disabled,
        "Modbus alone is a source"
    );
    let [a, b] = &config.modbus[..] else { panic!() };
    let ModbusLink::Rtu(line) = &a.link else {
        panic!()
    };
    assert_eq!(line.port, PathBuf::from("/dev/ttyUSB0"));
    assert_eq!(
        (line.baud, line.parity, line.stop_bits),
        (19200, Parity::Even, 1)
    );
    assert_eq!(a.link, b.link, "one bus");
    assert_eq!(a.link.url(), "rtu:///dev/ttyUSB0");
    assert_eq!(
        a.registers[0].value,
        RegisterValue::DoubleWord(DataType::I32, WordOrder::Little)
    );
    assert_eq!((a.registers[0].scale, a.registers[0].offset), (0.5, -3.0));
    assert_eq!(a.registers[1].value, RegisterValue::Bit);
}

#[test]
fn an_ipv6_tcp_host_keeps_its_port() {
    let text = "[[modbus]]\ndevice = \"m\"\nurl = \"tcp://[fd00::5]:1502\"\n\
                [[modbus.register]]\nmetric = \"x\"\naddress = 3\n";
    let slave = &parse(text).modbus[0];
    assert_eq!(
        slave.link,
        ModbusLink::Tcp {
            host: "fd00::5".into(),
            port: 1502
        }
    );
    assert_eq!(slave.link.url(), "tcp://[fd00::5]:1502");
}

#[test]
fn a_type_on_a_coil_is_refused() {
    let text = tcp_with_register("kind = \"coil\"\ntype = \"u16\"\n");
    assert_refused(
        &text,
        "modbus[0].register[0].type",
        8,
        "not used with kind = \"coil\"",
    );
}

#[test]
fn a_word_order_on_a_discrete_input_is_refused() {
    let text = tcp_with_register("kind = \"discrete\"\nword_order = \"big\"\n");
    assert_refused(&text, "modbus[0].register[0].word_order", 8, "one bit");
}

#[test]
fn a_word_order_on_a_16_bit_type_is_refused() {
    let text = tcp_with_register("type = \"i16\"\nword_order = \"little\"\n");
    assert_refused(
        &text,
        "modbus[0].register[0].word_order",
        8,
        "only used with 32-bit",
    );
}

#[test]
fn a_32_bit_value_at_the_last_address_is_refused() {
    let text = "[[modbus]]\ndevice = \"meter\"\nurl = \"tcp://10.0.0.5\"\n[[modbus.register]]\n\
                metric = \"m\"\naddress = 65535\ntype = \"f32\"\n";
    assert_refused(
        text,
        "modbus[0].register[0].address",
        6,
        "would end at 65536",
    );
}

#[test]
fn an_address_beyond_65535_is_out_of_range() {
    let text = "[[modbus]]\ndevice = \"meter\"\nurl = \"tcp://10.0.0.5\"\n[[modbus.register]]\n\
                metric = \"m\"\naddress = 65536\n";
    assert_refused(text, "modbus[0].register[0].address", 6, "0 to 65535");
}

#[test]
fn a_register_without_address_is_a_missing_key() {
    let text =
        "[[modbus]]\ndevice = \"meter\"\nurl = \"tcp://h\"\n[[modbus.register]]\nmetric = \"m\"\n";
    let err = assert_refused(
        text,
        "modbus[0].register[0].address",
        4,
        "required key is missing",
    );
    assert!(matches!(err, ConfigError::MissingKey { .. }));
}

#[test]
fn poll_ms_zero_is_refused() {
    let text = "[[modbus]]\ndevice = \"meter\"\nurl = \"tcp://h\"\npoll_ms = 0\n\
                [[modbus.register]]\nmetric = \"m\"\naddress = 0\n";
    assert_refused(text, "modbus[0].poll_ms", 4, "greater than 0");
}

#[test]
fn serial_keys_on_a_tcp_url_are_refused() {
    for (key, value) in [("baud", "9600"), ("parity", "\"none\""), ("stop_bits", "1")] {
        let text = format!(
            "[[modbus]]\ndevice = \"meter\"\nurl = \"tcp://h:502\"\n{key} = {value}\n\
             [[modbus.register]]\nmetric = \"m\"\naddress = 0\n"
        );
        assert_refused(
            &text,
            &format!("modbus[0].{key}"),
            4,
            "only used with an rtu:// url",
        );
    }
}

#[test]
fn bad_device_and_metric_ids_are_refused_like_mqtt_ids() {
    let text = "[[modbus]]\ndevice = \"a+b\"\nurl = \"tcp://h\"\n[[modbus.register]]\nmetric = \"m\"\naddress = 0\n";
    assert_refused(text, "modbus[0].device", 2, "'+'");
    let text = tcp_with_register("").replace("metric = \"m\"", "metric = \"x#\"");
    assert_refused(&text, "modbus[0].register[0].metric", 5, "'#'");
    let text = tcp_with_register("").replace("metric = \"m\"", "metric = \"\"");
    assert_refused(
        &text,
        "modbus[0].register[0].metric",
        5,
        "must not be empty",
    );
    let long = "d".repeat(20);
    let text = format!(
        "[ingest]\nmax_id_bytes = 16\n[[modbus]]\ndevice = \"{long}\"\nurl = \"tcp://h\"\n\
         [[modbus.register]]\nmetric = \"m\"\naddress = 0\n"
    );
    assert_refused(
        &text,
        "modbus[0].device",
        4,
        "over ingest.max_id_bytes (16)",
    );
}

#[test]
fn a_metric_twice_in_one_slave_is_refused_at_the_second() {
    let text = tcp_with_register("[[modbus.register]]\nmetric = \"m\"\naddress = 4\n");
    assert_refused(
        &text,
        "modbus[0].register[1].metric",
        8,
        "already the metric of modbus[0].register[0]",
    );
}

#[test]
fn the_same_metric_in_two_slaves_is_fine_but_not_the_same_device() {
    let one = tcp_with_register("");
    let two = format!("{one}{}", one.replace("\"meter\"", "\"meter-2\""));
    assert_eq!(parse(&two).modbus.len(), 2);
    let same = format!("{one}{one}");
    assert_refused(
        &same,
        "modbus[1].device",
        8,
        "already the device of modbus[0]",
    );
}

#[test]
fn a_slave_without_registers_is_refused_at_its_header() {
    let text = "\n[[modbus]]\ndevice = \"meter\"\nurl = \"tcp://h\"\n";
    assert_refused(text, "modbus[0]", 2, "has no [[modbus.register]]");
}

#[test]
fn unknown_keys_list_the_allowed_ones() {
    let err = assert_refused(
        &tcp_with_register("dtype = \"u16\"\n"),
        "modbus[0].register[0].dtype",
        7,
        "unknown key",
    );
    let ConfigError::UnknownKey { allowed, .. } = err else {
        panic!()
    };
    assert_eq!(
        allowed,
        [
            "metric",
            "kind",
            "address",
            "type",
            "word_order",
            "scale",
            "offset",
            "unit"
        ]
    );
    let text = "[[modbus]]\ndevice = \"m\"\nslave = 3\n";
    let err = assert_refused(text, "modbus[0].slave", 3, "unknown key");
    let ConfigError::UnknownKey { allowed, .. } = err else {
        panic!()
    };
    assert_eq!(
        allowed,
        [
            "device",
            "url",
            "baud",
            "parity",
            "stop_bits",
            "unit_id",
            "poll_ms",
            "timeout_ms",
            "backoff_max_ms",
            "register"
        ]
    );
}

#[test]
fn enum_values_list_the_allowed_words() {
    assert_refused(
        &tcp_with_register("kind = \"register\"\n"),
        "modbus[0].register[0].kind",
        7,
        r#"expected "holding", "input", "coil" or "discrete", found "register""#,
    );
    assert_refused(
        &tcp_with_register("type = \"float\"\n"),
        "modbus[0].register[0].type",
        7,
        r#"expected "u16", "i16", "u32", "i32" or "f32", found "float""#,
    );
    assert_refused(
        &tcp_with_register("type = 32\n"),
        "modbus[0].register[0].type",
        7,
        r#"expected "u16", "i16", "u32", "i32" or "f32", found 32"#,
    );
}

#[test]
fn urls_that_are_not_tcp_or_rtu_with_a_path_are_refused() {
    for (url, fragment) in [
        ("http://h:502", "found scheme \"http\""),
        ("rtu://dev/ttyUSB0", "three slashes"),
        ("rtu:///", "absolute device path"),
        ("tcp://", "has no host"),
        ("tcp://h:502/x", "nothing else"),
        ("tcp://user:pw@h", "nothing else"),
        ("meter", "expected \"tcp://host[:port]\""),
    ] {
        let text = format!(
            "[[modbus]]\ndevice = \"m\"\nurl = \"{url}\"\n[[modbus.register]]\nmetric = \"x\"\naddress = 0\n"
        );
        assert_refused(&text, "modbus[0].url", 3, fragment);
    }
}

#[test]
fn unit_ids_an_rtu_bus_cannot_address_are_refused() {
    for unit in [0, 248, 255] {
        let text = format!(
            "[[modbus]]\ndevice = \"m\"\nurl = \"rtu:///dev/ttyS1\"\nunit_id = {unit}\n\
             [[modbus.register]]\nmetric = \"x\"\naddress = 0\n"
        );
        assert_refused(&text, "modbus[0].unit_id", 4, "expected 1 to 247");
    }
    let tcp = "[[modbus]]\ndevice = \"m\"\nurl = \"tcp://h\"\nunit_id = 255\n\
               [[modbus.register]]\nmetric = \"x\"\naddress = 0\n";
    assert_eq!(parse(tcp).modbus[0].unit_id, 255);
}

#[test]
fn slaves_on_one_port_with_different_line_settings_are_refused() {
    let slave = |device: &str, extra: &str| {
        format!(
            "[[modbus]]\ndevice = \"{device}\"\nurl = \"rtu:///dev/ttyUSB0\"\n{extra}\n\
             [[modbus.register]]\nmetric = \"x\"\naddress = 0\n"
        )
    };
    let text = slave("a", "baud = 9600") + &slave("b", "baud = 19200");
    assert_refused(&text, "modbus[1].baud", 11, "differs from modbus[0] (9600)");
    let text = slave("a", "parity = \"odd\"") + &slave("b", "");
    assert_refused(
        &text,
        "modbus[1].parity",
        8,
        "none differs from modbus[0] (odd)",
    );
    let text = slave("a", "stop_bits = 3");
    assert_refused(&text, "modbus[0].stop_bits", 4, "expected 1 or 2");
}

#[test]
fn an_rtu_port_that_is_also_a_serial_port_is_refused() {
    let text = "[[serial]]\nport = \"/dev/ttyUSB0\"\n[[modbus]]\ndevice = \"m\"\nurl = \"rtu:///dev/ttyUSB0\"\n\
                [[modbus.register]]\nmetric = \"x\"\naddress = 0\n";
    assert_refused(text, "modbus[0].url", 5, "already read as serial[0]");
}

#[test]
fn scale_zero_and_non_finite_numbers_are_refused() {
    assert_refused(
        &tcp_with_register("scale = 0.0\n"),
        "modbus[0].register[0].scale",
        7,
        "other than 0",
    );
    assert_refused(
        &tcp_with_register("scale = inf\n"),
        "modbus[0].register[0].scale",
        7,
        "finite",
    );
    assert_refused(
        &tcp_with_register("offset = nan\n"),
        "modbus[0].register[0].offset",
        7,
        "finite",
    );
    assert_refused(
        &tcp_with_register("unit = \"\"\n"),
        "modbus[0].register[0].unit",
        7,
        "1 to 32 bytes",
    );
}
