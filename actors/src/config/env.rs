//! The `CAMPAIGN_NOTIFIER__*` environment overrides, applied over the file before serde reads it.
//!
//! `CAMPAIGN_NOTIFIER__A__B__C=value` sets `[a.b] c`. The value goes in as text, so that a text key
//! takes any value without quoting (`...__KAFKA__BROKERS=host:9092`, `...__KAFKA__GROUP_ID=2024`);
//! one whose key takes a number or a boolean is read as that once serde says so. An override of
//! a key no section has is refused, as the same key in the file would be; an error at a key an
//! override set names the variable.

use super::{Config, ConfigError};

/// Prefix of the environment variables that override config keys:
/// `CAMPAIGN_NOTIFIER__KAFKA__BROKERS` sets `[kafka] brokers`.
pub const ENV_PREFIX: &str = "CAMPAIGN_NOTIFIER__";

/// An environment override: the key it sets, and the value read as a number or a boolean for
/// when that key turns out to take one.
struct Override {
    var: String,
    key: Vec<String>,
    typed: Option<toml::Value>,
}

/// `table` (the file) with the `CAMPAIGN_NOTIFIER__*` variables among `env` applied, read as a
/// [`Config`].
pub(super) fn read(
    mut table: toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Config, ConfigError> {
    let mut overrides = Vec::new();
    for (var, value) in env {
        if let Some(path) = var.strip_prefix(ENV_PREFIX) {
            let key = key_of(&var, path)?;
            insert(&mut table, &var, &key, toml::Value::String(value.clone()))?;
            let typed = typed_value(&value);
            overrides.push(Override { var, key, typed });
        }
    }
    // Each override went in as text. One whose key takes a number or a boolean is read as
    // that, once serde says so: a text key keeps `2024` or `true` as it was written.
    loop {
        let e = match serde_path_to_error::deserialize(toml::Value::Table(table.clone())) {
            Ok(config) => return Ok(config),
            Err(e) => e,
        };
        let at = e.path().to_string();
        let set_by = overrides.iter_mut().find(|o| o.key.join(".") == at);
        match set_by.and_then(|o| Some((o.typed.take()?, &*o))) {
            Some((typed, o)) => insert(&mut table, &o.var, &o.key, typed)?,
            None => return Err(key_error(e, &overrides)),
        }
    }
}

/// The key `A__B__C` names: `["a", "b", "c"]`.
fn key_of(var: &str, path: &str) -> Result<Vec<String>, ConfigError> {
    let key: Vec<String> = path.split("__").map(|k| k.to_ascii_lowercase()).collect();
    match key.iter().any(|k| k.is_empty()) {
        true => Err(env_error(var, "empty key segment")),
        false => Ok(key),
    }
}

/// Puts `value` at `key`, making the sections on the way that the file does not have.
fn insert(
    table: &mut toml::Table,
    var: &str,
    key: &[String],
    value: toml::Value,
) -> Result<(), ConfigError> {
    let Some((last, parents)) = key.split_last() else {
        return Err(env_error(var, "no key after the prefix"));
    };
    let mut current = table;
    for section in parents {
        let entry = current
            .entry(section.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        current = entry
            .as_table_mut()
            .ok_or_else(|| env_error(var, format!("{section} is a value, not a section")))?;
    }
    current.insert(last.clone(), value);
    Ok(())
}

fn env_error(var: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Env {
        var: var.to_string(),
        reason: reason.into(),
    }
}

/// `value` as a TOML number or boolean, if it is one.
fn typed_value(value: &str) -> Option<toml::Value> {
    let mut doc = format!("v = {value}").parse::<toml::Table>().ok()?;
    match doc.remove("v")? {
        v @ (toml::Value::Integer(_) | toml::Value::Boolean(_) | toml::Value::Float(_)) => Some(v),
        _ => None,
    }
}

/// serde's error, at the key it names; with the variable that set the key, if one did.
fn key_error(
    e: serde_path_to_error::Error<toml::de::Error>,
    overrides: &[Override],
) -> ConfigError {
    let mut key = e.path().to_string();
    let mut message = e.into_inner().message().to_string();
    // serde names a missing field in the message, not the path: put it in the key.
    if let Some(field) = message
        .strip_prefix("missing field `")
        .and_then(|m| m.strip_suffix('`'))
    {
        key = if key == "." {
            field.to_string()
        } else {
            format!("{key}.{field}")
        };
    }
    if let Some(o) = overrides.iter().find(|o| o.key.join(".") == key) {
        message = format!("{message} (set by {})", o.var);
    }
    ConfigError::Key { key, message }
}
