//! Logging to stderr: readable lines, or one JSON object per line for a log collector
//! (`log.format = "json"`): `{"ts": ..., "level": ..., "target": ..., "message": ...}`.

use std::io::Write;

use campaign_actors::config::LogFormat;

/// The level comes from `level` unless `RUST_LOG` is set. A second call (tests) is harmless.
pub fn init(level: &str, format: LogFormat) {
    let env = env_logger::Env::default().default_filter_or(level);
    let mut builder = env_logger::Builder::from_env(env);
    match format {
        LogFormat::Text => {
            builder.format_timestamp_millis();
        }
        LogFormat::Json => {
            builder.format(|buf, record| {
                let line = serde_json::json!({
                    "ts": buf.timestamp_millis().to_string(),
                    "level": record.level().as_str(),
                    "target": record.target(),
                    "message": record.args().to_string(),
                });
                writeln!(buf, "{line}")
            });
        }
    }
    let _ = builder.try_init();
}
