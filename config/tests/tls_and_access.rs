//! TLS files, embedded-broker access and data directory permissions are checked at load time,
//! so `check-config` refuses what would fail (or be open) at run time, naming key and line.

use gateway_config::{Config, ConfigError};
use std::path::Path;
use std::process::Command;
use test_peers::Pki;

fn env(name: &str) -> Option<String> {
    (name == "PASSWORD").then(|| "pw-123".to_owned())
}

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse_with_env(text, "test.toml", env)
}

#[track_caller]
fn assert_refused(text: &str, key: &str, line: usize, fragment: &str) {
    let message = match parse(text) {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(e) => e.to_string(),
    };
    let head = format!("{key} (line {line}): ");
    assert!(
        message.starts_with(&head),
        "expected {head:?}…, got {message:?}"
    );
    assert!(
        message.contains(fragment),
        "expected {fragment:?} in {message:?}"
    );
}

fn mqtts(extra: &str) -> String {
    format!("[mqtt]\nurl = \"mqtts://127.0.0.1\"\n{extra}")
}

fn p(path: &Path) -> String {
    path.display().to_string()
}

#[test]
fn mqtts_without_ca_file_uses_the_platform_roots_and_is_tls() {
    let config = parse(&mqtts("")).expect("platform roots load");
    let tls = config.mqtt.tls.expect("mqtts:// builds a TLS client");
    assert!(tls.files().ca_file.is_none());
    assert!(!tls.has_client_certificate());
    // Plain mqtt:// has none.
    assert!(
        parse("[mqtt]\nurl = \"mqtt://127.0.0.1\"\n")
            .unwrap()
            .mqtt
            .tls
            .is_none()
    );
}

#[test]
fn client_certificates_load_when_the_key_matches() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(dir.path());
    let t = &pki.trusted;
    for (cert, key) in [
        (&t.client_cert, &t.client_key),
        (&t.rsa_client_cert, &t.rsa_client_key),
    ] {
        let text = mqtts(&format!(
            "ca_file = \"{}\"\nclient_cert_file = \"{}\"\nclient_key_file = \"{}\"\nalpn = [\"x-amzn-mqtt-ca\"]\n",
            p(&t.ca),
            p(cert),
            p(key)
        ));
        let config = parse(&text).unwrap_or_else(|e| panic!("{e}"));
        let tls = config.mqtt.tls.unwrap();
        assert!(tls.has_client_certificate());
        assert_eq!(
            tls.config().alpn_protocols,
            vec![b"x-amzn-mqtt-ca".to_vec()]
        );
    }
}

/// The traditional encodings (`BEGIN RSA PRIVATE KEY`, `BEGIN EC PRIVATE KEY`) load too.
#[test]
fn pkcs1_and_sec1_keys_load() {
    let test = "pkcs1_and_sec1_keys_load";
    if Command::new("openssl").arg("version").output().is_err() {
        test_peers::missing(
            test,
            "openssl is not installed",
            "apt-get install -y openssl",
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(dir.path());
    let t = &pki.trusted;
    // `openssl ec` writes SEC1 by default; `openssl rsa` needs -traditional for PKCS#1.
    for (cert, key, args, header) in [
        (
            &t.rsa_client_cert,
            &t.rsa_client_key,
            ["rsa", "-traditional"],
            "BEGIN RSA PRIVATE KEY",
        ),
        (
            &t.client_cert,
            &t.client_key,
            ["ec", "-check"],
            "BEGIN EC PRIVATE KEY",
        ),
    ] {
        let kind = args[0];
        let out = dir.path().join(format!("{kind}-traditional.key"));
        let status = Command::new("openssl")
            .args(args)
            .arg("-in")
            .arg(key)
            .arg("-out")
            .arg(&out)
            .output()
            .unwrap();
        assert!(status.status.success(), "{status:?}");
        assert!(std::fs::read_to_string(&out).unwrap().contains(header));
        let text = format!(
            "[upstream]\nurl = \"https://127.0.0.1/ingest\"\nca_file = \"{}\"\nclient_cert_file = \"{}\"\nclient_key_file = \"{}\"\n",
            p(&t.ca),
            p(cert),
            p(&out)
        );
        let config = parse(&text).unwrap_or_else(|e| panic!("{kind}: {e}"));
        assert!(config.upstream.tls.unwrap().has_client_certificate());
    }
}

#[test]
fn unreadable_mismatched_or_half_tls_files_are_refused_with_key_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(dir.path());
    let t = &pki.trusted;
    let nowhere = dir.path().join("nowhere.pem");
    assert_refused(
        &mqtts(&format!("ca_file = \"{}\"\n", p(&nowhere))),
        "mqtt.ca_file",
        3,
        "cannot read",
    );
    // A key where a certificate belongs.
    assert_refused(
        &mqtts(&format!("ca_file = \"{}\"\n", p(&t.client_key))),
        "mqtt.ca_file",
        3,
        "no \"BEGIN CERTIFICATE\" block",
    );
    // The RSA client's key with the EC client's certificate.
    assert_refused(
        &mqtts(&format!(
            "client_cert_file = \"{}\"\nclient_key_file = \"{}\"\n",
            p(&t.client_cert),
            p(&t.rsa_client_key)
        )),
        "mqtt.client_key_file",
        4,
        "does not belong to the certificate",
    );
    assert_refused(
        &mqtts(&format!("client_cert_file = \"{}\"\n", p(&t.client_cert))),
        "mqtt.client_cert_file",
        3,
        "needs client_key_file",
    );
    // A certificate where the key belongs.
    assert_refused(
        &format!(
            "[upstream]\nurl = \"https://127.0.0.1/x\"\nclient_cert_file = \"{}\"\nclient_key_file = \"{}\"\n",
            p(&t.client_cert),
            p(&t.client_cert)
        ),
        "upstream.client_key_file",
        4,
        "no private key found",
    );
    assert_refused(
        &mqtts("alpn = [\"\"]\n"),
        "mqtt.alpn",
        3,
        "not a protocol name",
    );
}

#[test]
fn tls_keys_with_a_plain_url_are_refused() {
    assert_refused(
        "[mqtt]\nurl = \"mqtt://127.0.0.1\"\nclient_cert_file = \"/x.pem\"\n",
        "mqtt.client_cert_file",
        3,
        "only used with an mqtts:// url",
    );
    assert_refused(
        "[upstream]\nurl = \"http://127.0.0.1/in?key=s3cret\"\nca_file = \"/x.pem\"\n",
        "upstream.ca_file",
        3,
        "only used with an https:// url, but upstream.url is \"http://127.0.0.1/in?key=***\"",
    );
}

#[test]
fn a_refused_url_is_echoed_without_its_secrets() {
    let err = parse("[upstream]\nurl = \"ftp://host/in?token=s3cret\"\n").unwrap_err();
    let message = err.to_string();
    assert!(message.starts_with("upstream.url (line 2)"), "{message}");
    assert!(!message.contains("s3cret"), "{message}");
}

#[test]
fn an_embedded_broker_on_the_network_needs_credentials_or_an_explicit_waiver() {
    let open = "[mqtt]\nmode = \"embedded\"\nembedded_listen = \"0.0.0.0:1883\"\n";
    assert_refused(open, "mqtt.embedded_listen", 3, "would accept anyone");
    parse(&format!("{open}embedded_allow_anonymous = true\n")).unwrap();
    let config = parse(&format!(
        "{open}embedded_username = \"devices\"\nembedded_password_env = \"PASSWORD\"\n"
    ))
    .unwrap();
    assert_eq!(config.mqtt.embedded_password.unwrap().expose(), "pw-123");
    assert_refused(
        &format!("{open}embedded_password_env = \"PASSWORD\"\n"),
        "mqtt.embedded_password_env",
        4,
        "needs mqtt.embedded_username",
    );
    assert_refused(
        &format!("{open}embedded_username = \"devices\"\n"),
        "mqtt.embedded_username",
        4,
        "needs mqtt.embedded_password_env",
    );
    // Loopback needs nothing.
    parse("[mqtt]\nmode = \"embedded\"\nembedded_listen = \"127.0.0.1:1883\"\n").unwrap();
    assert_refused(
        "[mqtt]\nembedded_max_connections = 0\n",
        "mqtt.embedded_max_connections",
        2,
        "greater than 0",
    );
}

#[test]
fn data_dir_mode_is_owner_rwx_and_nothing_beyond_0777() {
    assert_eq!(parse("").unwrap().data_dir_mode, 0o700);
    assert_eq!(
        parse("data_dir_mode = 0o750\n").unwrap().data_dir_mode,
        0o750
    );
    assert_refused("data_dir_mode = 0o644\n", "data_dir_mode", 1, "found 0o644");
    assert_refused(
        "data_dir_mode = 0o4700\n",
        "data_dir_mode",
        1,
        "found 0o4700",
    );
}

#[test]
fn debug_of_a_config_shows_no_secret() {
    let text = "[upstream]\nurl = \"http://127.0.0.1/in?code=q-s3cret\"\n\
                bearer_token_env = \"PASSWORD\"\n\
                [mqtt]\nusername = \"u\"\npassword_env = \"PASSWORD\"\n\
                embedded_username = \"d\"\nembedded_password_env = \"PASSWORD\"\n";
    let shown = format!("{:?} {:#?}", parse(text).unwrap(), parse(text).unwrap());
    assert!(!shown.contains("q-s3cret"), "{shown}");
    assert!(!shown.contains("pw-123"), "{shown}");
    assert!(shown.contains("code=***"), "{shown}");
}

#[test]
fn secrets_sent_in_the_clear_to_another_host_are_named() {
    let text = "[mqtt]\nurl = \"mqtt://10.0.0.5\"\nusername = \"u\"\npassword_env = \"PASSWORD\"\n\
                [upstream]\nurl = \"http://cloud.example/in\"\nbearer_token_env = \"PASSWORD\"\n";
    let warnings = parse(text).unwrap().cleartext_secrets();
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    assert!(warnings[0].starts_with("mqtt.password_env"), "{warnings:?}");
    assert!(
        warnings[1].starts_with("upstream.bearer_token_env"),
        "{warnings:?}"
    );
    let local = "[mqtt]\nurl = \"mqtt://127.0.0.1\"\nusername = \"u\"\npassword_env = \"PASSWORD\"\n\
                 [upstream]\nurl = \"http://localhost/in\"\nbearer_token_env = \"PASSWORD\"\n";
    assert!(parse(local).unwrap().cleartext_secrets().is_empty());
}
