//! The config parser never panics: any text is a config or an error that names where.
#![no_main]

use gateway_config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = Config::parse_with_env(text, "fuzz", |_| Some("secret".to_owned()));
});
