//! Session settings: what `SET`, `SHOW`, `RESET` and `current_setting()` see.

use std::collections::BTreeMap;
use std::sync::Arc;

use parking_lot::RwLock;

/// A setting that cannot be changed or does not exist.
#[derive(Debug, thiserror::Error)]
pub enum SettingError {
    /// `SHOW x` or `current_setting('x')` for a name nobody defined.
    #[error("unrecognized configuration parameter \"{0}\"")]
    Unknown(String),
}

/// The defaults every session starts with. Names are lower case, as
/// PostgreSQL compares them case-insensitively.
const DEFAULTS: &[(&str, &str)] = &[
    ("application_name", ""),
    ("client_encoding", "UTF8"),
    ("server_encoding", "UTF8"),
    ("datestyle", "ISO, MDY"),
    ("intervalstyle", "postgres"),
    ("timezone", "UTC"),
    ("extra_float_digits", "1"),
    ("search_path", "\"$user\", public"),
    ("standard_conforming_strings", "on"),
    ("integer_datetimes", "on"),
    ("transaction_isolation", "read committed"),
    ("default_transaction_isolation", "read committed"),
    ("transaction_read_only", "off"),
    ("default_transaction_read_only", "off"),
    ("statement_timeout", "0"),
    ("lock_timeout", "0"),
    ("idle_in_transaction_session_timeout", "0"),
    ("bytea_output", "hex"),
    ("max_identifier_length", "63"),
    ("jit", "off"),
    ("is_superuser", "on"),
    ("max_connections", "100"),
];

/// The PostgreSQL spelling of a setting name, for SHOW's column header and
/// ParameterStatus.
pub fn canonical_name(name: &str) -> String {
    match name.to_ascii_lowercase().as_str() {
        "datestyle" => "DateStyle".into(),
        "timezone" => "TimeZone".into(),
        "intervalstyle" => "IntervalStyle".into(),
        other => other.to_string(),
    }
}

/// Per-session settings, shared between the protocol handler and the SQL
/// functions that read them.
#[derive(Debug, Clone)]
pub struct SessionSettings {
    values: Arc<RwLock<BTreeMap<String, String>>>,
}

impl Default for SessionSettings {
    fn default() -> Self {
        let values = DEFAULTS
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Self {
            values: Arc::new(RwLock::new(values)),
        }
    }
}

impl SessionSettings {
    /// Normalises a setting name as PostgreSQL does (case-insensitive, with
    /// the two spellings of the time zone and isolation settings folded).
    pub fn normalize(name: &str) -> String {
        let lower = name.trim().trim_matches('"').to_ascii_lowercase();
        match lower.as_str() {
            "time zone" | "time_zone" => "timezone".into(),
            "transaction isolation level" => "transaction_isolation".into(),
            "session authorization" => "session_authorization".into(),
            _ => lower,
        }
    }

    /// The current value, or an error if the name is unknown.
    pub fn get(&self, name: &str) -> Result<String, SettingError> {
        let key = Self::normalize(name);
        self.values
            .read()
            .get(&key)
            .cloned()
            .ok_or(SettingError::Unknown(key))
    }

    /// Sets a value. Any name is accepted, as PostgreSQL accepts custom
    /// (dotted) settings; the well-known ones are what drivers send.
    pub fn set(&self, name: &str, value: &str) {
        self.values
            .write()
            .insert(Self::normalize(name), value.to_string());
    }

    /// Restores one setting to its default (or removes a custom one).
    pub fn reset(&self, name: &str) {
        let key = Self::normalize(name);
        let mut values = self.values.write();
        match DEFAULTS.iter().find(|(k, _)| *k == key) {
            Some((_, v)) => {
                values.insert(key, v.to_string());
            }
            None => {
                values.remove(&key);
            }
        }
    }

    /// Restores every setting to its default.
    pub fn reset_all(&self) {
        *self.values.write() = Self::default().values.read().clone();
    }

    /// All settings, in name order.
    pub fn all(&self) -> Vec<(String, String)> {
        self.values
            .read()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_case_insensitive_and_reset_restores_defaults() {
        let s = SessionSettings::default();
        s.set("DateStyle", "ISO, DMY");
        assert_eq!(s.get("datestyle").unwrap(), "ISO, DMY");
        s.set("TIME ZONE", "Europe/Paris");
        assert_eq!(s.get("TimeZone").unwrap(), "Europe/Paris");
        s.reset_all();
        assert_eq!(s.get("DATESTYLE").unwrap(), "ISO, MDY");
        assert_eq!(s.get("timezone").unwrap(), "UTC");
        assert!(matches!(
            s.get("no_such_thing"),
            Err(SettingError::Unknown(_))
        ));
        s.set("myapp.flag", "1");
        s.reset("myapp.flag");
        assert!(s.get("myapp.flag").is_err());
    }
}
