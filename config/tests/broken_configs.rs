//! Every broken config is refused with a message that names the key and its line and says what
//! is allowed.

use gateway_config::{Config, ConfigError};

/// The environment of these tests: one variable set, one set but empty, nothing else.
fn env(name: &str) -> Option<String> {
    match name {
        "PRESENT_TOKEN" => Some("tok-123".to_owned()),
        "EMPTY_TOKEN" => Some(String::new()),
        _ => None,
    }
}

fn refuse(text: &str) -> ConfigError {
    match Config::parse_with_env(text, "test.toml", env) {
        Ok(config) => panic!("accepted a broken config:\n{text}\nas {config:#?}"),
        Err(e) => e,
    }
}

/// Asserts the message starts with `key (line N):` and contains `fragment`.
#[track_caller]
fn assert_refused(text: &str, key: &str, line: usize, fragment: &str) -> ConfigError {
    let err = refuse(text);
    let message = err.to_string();
    let head = format!("{key} (line {line}): ");
    assert!(
        message.starts_with(&head),
        "message should start with {head:?}, got {message:?}"
    );
    assert!(
        message.contains(fragment),
        "message should contain {fragment:?}, got {message:?}"
    );
    assert_eq!(err.key(), Some(key), "{message}");
    assert_eq!(err.line(), Some(line), "{message}");
    assert_eq!(err.origin(), "test.toml");
    err
}

const CONTRACT: &str = include_str!("../../docs/gateway.contract.toml");

#[test]
fn bad_enum_value_in_the_contract_names_key_line_and_allowed_words_exactly() {
    let text = CONTRACT.replace("\"drop_oldest\"  ", "\"drop_newest\"  ");
    assert_ne!(text, CONTRACT);
    let err = refuse(&text);
    let line = 1 + CONTRACT
        .lines()
        .position(|l| l.starts_with("when_full = "))
        .expect("the contract sets when_full");
    assert_eq!(
        err.to_string(),
        format!(
            r#"buffer.when_full (line {line}): expected "drop_oldest" or "block", found "drop_newest""#
        )
    );
    assert!(matches!(err, ConfigError::WrongValue { .. }));
}

#[test]
fn unknown_top_level_key_is_named_with_the_allowed_keys() {
    let err = assert_refused(
        "gatway_id = \"gw\"\n",
        "gatway_id",
        1,
        "unknown key; allowed keys here: gateway_id, data_dir",
    );
    assert!(matches!(err, ConfigError::UnknownKey { ref allowed, .. } if allowed.len() == 17));
}

#[test]
fn unknown_key_inside_a_section_is_named_with_its_dotted_path() {
    assert_refused(
        "[mqtt]\nmode = \"embedded\"\nusernme = \"gw\"\n",
        "mqtt.usernme",
        3,
        "allowed keys here: mode, url, client_id, username,",
    );
}

#[test]
fn unknown_key_in_an_alarm_rule_is_named_with_its_index() {
    assert_refused(
        "[[alarm]]\nname = \"a\"\nabove = 1.0\n\n[[alarm]]\nname = \"b\"\nabove = 2.0\nhysteresis = 1.0\n",
        "alarm[1].hysteresis",
        8,
        "clear_below",
    );
}

#[test]
fn string_where_a_number_goes_is_a_wrong_type() {
    let err = assert_refused(
        "[buffer]\nmax_bytes = \"256MiB\"\n",
        "buffer.max_bytes",
        2,
        "expected a non-negative integer, found string \"256MiB\"",
    );
    assert!(matches!(err, ConfigError::WrongValue { .. }));
}

#[test]
fn negative_quota_is_out_of_range() {
    assert_refused(
        "[buffer]\n\nalarm_max_bytes = -5\n",
        "buffer.alarm_max_bytes",
        3,
        "expected a non-negative integer, found integer -5",
    );
}

#[test]
fn number_too_big_for_its_type_names_the_range() {
    assert_refused(
        "[mqtt]\nkeep_alive_s = 70000\n",
        "mqtt.keep_alive_s",
        2,
        "expected an integer from 0 to 65535",
    );
}

#[test]
fn single_string_where_an_array_goes_is_a_wrong_type() {
    assert_refused(
        "[mqtt]\ntopics = \"sensors/#\"\n",
        "mqtt.topics",
        2,
        "expected an array",
    );
}

#[test]
fn bad_compression_lists_the_allowed_values() {
    assert_refused(
        "[upstream]\ncompression = \"zstd\"\n",
        "upstream.compression",
        2,
        r#"expected "gzip" or "none", found "zstd""#,
    );
}

#[test]
fn number_where_an_enum_goes_lists_the_allowed_values() {
    assert_refused(
        "[[alarm]]\nname = \"a\"\nabove = 1.0\nseverity = 3\n",
        "alarm[0].severity",
        4,
        r#"expected "info", "warning" or "critical", found 3"#,
    );
}

#[test]
fn bad_mqtt_mode_in_a_dotted_key_lists_the_modes() {
    assert_refused(
        "mqtt.mode = \"off\"\n",
        "mqtt.mode",
        1,
        r#"expected "embedded", "external" or "disabled", found "off""#,
    );
}

#[test]
fn missing_secret_variable_names_the_key_and_the_variable() {
    let err = assert_refused(
        "[upstream]\nbearer_token_env = \"GATEWAY_UPSTREAM_TOKEN\"\n",
        "upstream.bearer_token_env",
        2,
        "environment variable GATEWAY_UPSTREAM_TOKEN is not set",
    );
    assert!(
        matches!(err, ConfigError::MissingSecret { ref variable, .. } if variable == "GATEWAY_UPSTREAM_TOKEN")
    );
}

#[test]
fn empty_secret_variable_is_refused_like_a_missing_one() {
    assert_refused(
        "[mqtt]\nusername = \"gw\"\npassword_env = \"EMPTY_TOKEN\"\n",
        "mqtt.password_env",
        3,
        "environment variable EMPTY_TOKEN is empty",
    );
}

#[test]
fn password_without_username_is_refused() {
    assert_refused(
        "[mqtt]\npassword_env = \"PRESENT_TOKEN\"\n",
        "mqtt.password_env",
        2,
        "needs mqtt.username",
    );
}

#[test]
fn clear_below_above_the_trigger_is_inverted_hysteresis() {
    assert_refused(
        "[[alarm]]\nname = \"overheat\"\nabove = 35.0\nclear_below = 36.0\n",
        "alarm[0].clear_below",
        4,
        "must be <= above (35.0), found 36.0",
    );
}

#[test]
fn clear_above_below_the_trigger_is_inverted_hysteresis() {
    assert_refused(
        "[[alarm]]\nname = \"overheat\"\nabove = 35.0\n\n[[alarm]]\nname = \"freezing\"\nbelow = 0.0\nclear_above = -1.0\n",
        "alarm[1].clear_above",
        8,
        "must be >= below (0.0), found -1.0",
    );
}

#[test]
fn band_rule_with_below_not_under_above_is_refused() {
    assert_refused(
        "[[alarm]]\nname = \"band\"\nabove = 10.0\nbelow = 20.0\n",
        "alarm[0].below",
        4,
        "must be < above (10.0)",
    );
}

#[test]
fn clear_threshold_without_its_trigger_is_refused() {
    assert_refused(
        "[[alarm]]\nname = \"a\"\nbelow = 1.0\nclear_below = 3.0\n",
        "alarm[0].clear_below",
        4,
        "only applies with above",
    );
}

#[test]
fn rule_mixing_kinds_of_condition_names_the_second_kind() {
    assert_refused(
        "[[alarm]]\nname = \"a\"\nabove = 1.0\nno_data_s = 60\n",
        "alarm[0].no_data_s",
        4,
        "exactly one",
    );
}

#[test]
fn rule_without_condition_is_refused_at_its_header() {
    assert_refused(
        "[[alarm]]\nname = \"a\"\nmetric = \"t\"\n",
        "alarm[0]",
        1,
        "has no condition",
    );
}

#[test]
fn silence_rule_with_for_s_is_refused() {
    assert_refused(
        "[[alarm]]\nname = \"quiet\"\nno_data_s = 60\nfor_s = 5\n",
        "alarm[0].for_s",
        4,
        "not used with no_data_s",
    );
}

#[test]
fn non_finite_threshold_is_refused() {
    assert_refused(
        "[[alarm]]\nname = \"a\"\nabove = inf\n",
        "alarm[0].above",
        3,
        "expected a finite number",
    );
}

#[test]
fn rule_without_name_is_a_missing_key_at_its_header() {
    let err = assert_refused(
        "[[alarm]]\nname = \"a\"\nabove = 1.0\n[[alarm]]\nabove = 2.0\n",
        "alarm[1].name",
        4,
        "required key is missing",
    );
    assert!(matches!(err, ConfigError::MissingKey { .. }));
}

#[test]
fn serial_entry_without_port_is_a_missing_key() {
    assert_refused(
        "[[serial]]\nbaud = 9600\n",
        "serial[0].port",
        1,
        "required key is missing",
    );
}

#[test]
fn same_serial_port_twice_is_refused() {
    assert_refused(
        "[[serial]]\nport = \"/dev/ttyUSB0\"\n[[serial]]\nport = \"/dev/ttyUSB0\"\n",
        "serial[1].port",
        4,
        "already used",
    );
}

#[test]
fn disabled_mqtt_without_serial_port_leaves_no_source() {
    assert_refused(
        "gateway_id = \"gw\"\n[mqtt]\nmode = \"disabled\"\n",
        "mqtt.mode",
        3,
        "no source of readings",
    );
}

#[test]
fn topic_template_without_device_is_refused() {
    assert_refused(
        "[mqtt]\ntopic_templates = [\n  \"sensors/{device}\",\n  \"sensors/x/{metric}\",\n]\n",
        "mqtt.topic_templates[1]",
        4,
        "must contain {device} exactly once",
    );
}

#[test]
fn topic_template_with_an_unknown_placeholder_is_refused() {
    assert_refused(
        "[mqtt]\ntopic_templates = [\"sensors/{device}/{sensor}\"]\n",
        "mqtt.topic_templates[0]",
        2,
        "the only placeholders are {device} and {metric}",
    );
}

#[test]
fn topic_filter_with_hash_in_the_middle_is_refused() {
    assert_refused(
        "[mqtt]\ntopics = [\"sensors/#/x\"]\n",
        "mqtt.topics[0]",
        2,
        "not a valid MQTT topic filter",
    );
}

#[test]
fn upstream_url_with_a_non_http_scheme_is_refused() {
    assert_refused(
        "[upstream]\nurl = \"ftp://cloud.example/ingest\"\n",
        "upstream.url",
        2,
        "expected a http:// or https:// URL, found scheme \"ftp\"",
    );
}

#[test]
fn upstream_url_that_does_not_parse_is_refused() {
    assert_refused(
        "[upstream]\nurl = \"cloud.example/ingest\"\n",
        "upstream.url",
        2,
        "expected a http:// or https:// URL, found \"cloud.example/ingest\"",
    );
}

#[test]
fn credentials_in_the_upstream_url_are_refused() {
    assert_refused(
        "[upstream]\nurl = \"https://user:pw@cloud.example/ingest\"\n",
        "upstream.url",
        2,
        "credentials do not belong in the URL",
    );
}

#[test]
fn mqtt_url_with_an_http_scheme_is_refused() {
    assert_refused(
        "[mqtt]\nurl = \"http://broker:1883\"\n",
        "mqtt.url",
        2,
        "expected a mqtt:// or mqtts:// URL",
    );
}

#[test]
fn zero_batch_size_is_refused() {
    assert_refused(
        "[upstream]\nbatch_max_records = 0\n",
        "upstream.batch_max_records",
        2,
        "must be greater than 0, found 0",
    );
}

#[test]
fn zero_commit_interval_is_refused() {
    assert_refused(
        "[buffer]\ncommit_interval_ms = 0\n",
        "buffer.commit_interval_ms",
        2,
        "must be greater than 0",
    );
}

#[test]
fn a_commit_stretch_over_a_second_is_refused() {
    assert_refused(
        "[buffer]\ncommit_stretch_ms = 1001\n",
        "buffer.commit_stretch_ms",
        2,
        "must be at most 1000",
    );
}

#[test]
fn zero_quota_is_refused() {
    assert_refused(
        "[buffer]\nmax_bytes = 0\n",
        "buffer.max_bytes",
        2,
        "must be greater than 0",
    );
}

#[test]
fn glob_that_does_not_compile_is_refused() {
    assert_refused(
        "[[alarm]]\nname = \"a\"\nmetric = \"temp[\"\nabove = 1.0\n",
        "alarm[0].metric",
        3,
        "expected a glob",
    );
}

#[test]
fn duplicate_alarm_name_is_refused_at_the_second_rule() {
    assert_refused(
        "[[alarm]]\nname = \"hot\"\nabove = 1.0\n\n[[alarm]]\nname = \"hot\"\nabove = 2.0\n",
        "alarm[1].name",
        6,
        "names must be unique",
    );
}

#[test]
fn alarm_name_with_a_slash_is_refused() {
    assert_refused(
        "[[alarm]]\nname = \"a/b\"\nabove = 1.0\n",
        "alarm[0].name",
        2,
        "not allowed",
    );
}

#[test]
fn admin_on_a_non_loopback_address_without_token_is_refused() {
    assert_refused(
        "[admin]\nlisten = \"0.0.0.0:9100\"\n",
        "admin.listen",
        2,
        "set admin.token_env",
    );
}

#[test]
fn bad_socket_address_is_refused() {
    assert_refused(
        "[admin]\nlisten = \"localhost:9100\"\n",
        "admin.listen",
        2,
        "expected a socket address IP:PORT",
    );
}

#[test]
fn embedded_listen_without_port_is_refused() {
    assert_refused(
        "[mqtt]\nembedded_listen = \"0.0.0.0\"\n",
        "mqtt.embedded_listen",
        2,
        "found \"0.0.0.0\"",
    );
}

#[test]
fn retry_initial_above_retry_max_is_refused() {
    assert_refused(
        "[upstream]\nretry_initial_ms = 5000\nretry_max_ms = 1000\n",
        "upstream.retry_initial_ms",
        2,
        "must be <= upstream.retry_max_ms (1000), found 5000",
    );
}

#[test]
fn retry_on_a_success_status_is_refused() {
    assert_refused(
        "[upstream]\nretry_on_status = [429, 200]\n",
        "upstream.retry_on_status[1]",
        2,
        "from 400 to 599, found 200",
    );
}

#[test]
fn ca_file_with_plain_http_upstream_is_refused() {
    assert_refused(
        "[upstream]\nca_file = \"/etc/ca.pem\"\n",
        "upstream.ca_file",
        2,
        "only used with an https:// url",
    );
}

#[test]
fn gateway_id_with_a_colon_is_refused() {
    assert_refused("gateway_id = \"gw:1\"\n", "gateway_id", 1, "contains ':'");
}

#[test]
fn empty_gateway_id_is_refused() {
    assert_refused(
        "\n\ngateway_id = \"\"\n",
        "gateway_id",
        3,
        "must not be empty",
    );
}

#[test]
fn section_written_as_a_value_is_a_wrong_type() {
    assert_refused("mqtt = 5\n", "mqtt", 1, "expected a table, found integer 5");
}

#[test]
fn syntax_error_names_line_and_column() {
    let err = refuse("gateway_id = \"gw\"\n[buffer]\nmax_bytes = = 1\n");
    assert!(
        matches!(
            err,
            ConfigError::Syntax {
                line: 3,
                column: 13,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .starts_with("line 3, column 13: invalid TOML:"),
        "{err}"
    );
}

#[test]
fn duplicate_key_is_a_syntax_error_on_its_line() {
    let err = refuse("[buffer]\nmax_bytes = 1\nmax_bytes = 2\n");
    assert_eq!(err.line(), Some(3), "{err}");
}

#[test]
fn missing_file_is_a_read_error_naming_the_path() {
    let err = Config::load("/nonexistent/gateway.toml").unwrap_err();
    assert!(matches!(err, ConfigError::Read { .. }));
    assert!(
        err.to_string().contains("/nonexistent/gateway.toml"),
        "{err}"
    );
}

#[test]
fn errors_from_a_file_carry_its_path_as_origin() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gw.toml");
    std::fs::write(&path, "[buffer]\nwhen_full = \"drop_newest\"\n").unwrap();
    let err = Config::load(&path).unwrap_err();
    assert_eq!(err.origin(), path.display().to_string());
    assert_eq!(err.key(), Some("buffer.when_full"));
}

#[test]
fn ingest_limits_out_of_range_are_named_with_key_and_line() {
    assert_refused(
        "[ingest]\nmax_future_ts_s = 10\nmax_id_bytes = 0\n",
        "ingest.max_id_bytes",
        3,
        "must be greater than 0",
    );
    assert_refused(
        "[ingest]\nmax_id_bytes = 70000\n",
        "ingest.max_id_bytes",
        2,
        "at most 65535",
    );
    assert_refused(
        "[ingest]\nmax_past_ts_s = -1\n",
        "ingest.max_past_ts_s",
        2,
        "",
    );
    let err = assert_refused(
        "[ingest]\nmax_id_byte = 10\n",
        "ingest.max_id_byte",
        2,
        "allowed keys here: max_id_bytes, max_future_ts_s, max_past_ts_s",
    );
    assert!(matches!(err, ConfigError::UnknownKey { .. }));
}

#[test]
fn a_packet_limit_that_cannot_hold_the_largest_payload_is_refused() {
    assert_refused(
        "[mqtt]\nmax_payload_bytes = 65536\nmax_packet_bytes = 65536\n",
        "mqtt.max_packet_bytes",
        3,
        "must be greater than mqtt.max_payload_bytes (65536)",
    );
}

#[test]
fn payload_and_line_limits_above_one_mebibyte_are_refused_so_every_reading_fits_the_buffer() {
    assert_refused(
        "[mqtt]\nmax_payload_bytes = 1048577\nmax_packet_bytes = 2000000\n",
        "mqtt.max_payload_bytes",
        2,
        "must be at most 1048576 (1 MiB), found 1048577",
    );
    assert_refused(
        "[[serial]]\nport = \"/dev/ttyUSB0\"\ndevice = \"uart-0\"\nmax_line_bytes = 2000000\n",
        "serial[0].max_line_bytes",
        4,
        "must be at most 1048576 (1 MiB), found 2000000",
    );
}
