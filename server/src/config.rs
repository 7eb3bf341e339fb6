//! Server configuration: defaults < TOML file < command-line flags,
//! validated once before anything listens.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::ServerError;

/// How clients prove who they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum AuthMethod {
    /// Anyone who can reach the listener may connect as any user.
    #[default]
    Trust,
    /// SCRAM-SHA-256 against the users in `[[auth.users]]`.
    ScramSha256,
}

/// A user allowed to log in with a password.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    pub name: String,
    pub password: String,
}

/// `[auth]`
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    pub method: AuthMethod,
    pub users: Vec<UserConfig>,
    /// Trust on an address other than loopback lets anyone on the network in;
    /// it has to be asked for explicitly.
    pub allow_trust_on_non_loopback: bool,
}

/// `[tls]`: both files in PEM.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// When a write is acknowledged relative to fsync.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum SyncMode {
    /// After fdatasync; concurrent writers share one (group commit).
    #[default]
    Always,
    /// After write(2); a background thread syncs every few milliseconds.
    Batch,
    /// After write(2); the OS writes back when it likes.
    None,
}

/// `[storage]`
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    pub sync: SyncMode,
    /// A memstore this big is flushed to a store file.
    pub memstore_flush_bytes: usize,
    /// A region this big splits, unless its table sets SPLIT_SIZE.
    pub region_split_bytes: u64,
}

impl Default for StorageConfig {
    fn default() -> Self {
        let e = tidebase_catalog::storage::EngineOptions::default();
        Self {
            sync: SyncMode::Always,
            memstore_flush_bytes: e.memstore_flush_bytes,
            region_split_bytes: e.region_split_bytes,
        }
    }
}

impl StorageConfig {
    pub fn engine_options(&self) -> tidebase_catalog::storage::EngineOptions {
        tidebase_catalog::storage::EngineOptions {
            sync: match self.sync {
                SyncMode::Always => tidebase_catalog::storage::SyncPolicy::Always,
                SyncMode::Batch => tidebase_catalog::storage::SyncPolicy::Batch,
                SyncMode::None => tidebase_catalog::storage::SyncPolicy::None,
            },
            memstore_flush_bytes: self.memstore_flush_bytes,
            region_split_bytes: self.region_split_bytes,
            ..Default::default()
        }
    }
}

/// Everything the server needs to start.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address of the PostgreSQL listener.
    pub listen: SocketAddr,
    /// Address of the Kafka protocol listener; `None` turns it off (the
    /// library default; the `tidebase` binary defaults to 127.0.0.1:9092).
    pub kafka_listen: Option<SocketAddr>,
    /// Where tables live on disk.
    pub data_dir: PathBuf,
    /// A tracing filter such as `info` or `tidebase_server=debug`.
    pub log_level: String,
    /// Connections beyond this get SQLSTATE 53300.
    pub max_connections: usize,
    /// On shutdown, how long running statements may take to finish.
    pub shutdown_grace_ms: u64,
    pub auth: AuthConfig,
    pub tls: Option<TlsConfig>,
    pub storage: StorageConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 5433)),
            kafka_listen: None,
            data_dir: PathBuf::from("./tidebase-data"),
            log_level: "info".to_string(),
            max_connections: 100,
            shutdown_grace_ms: 10_000,
            auth: AuthConfig::default(),
            tls: None,
            storage: StorageConfig::default(),
        }
    }
}

impl Config {
    /// Reads a TOML file; keys it does not set keep their defaults.
    pub fn from_file(path: &Path) -> Result<Self, ServerError> {
        let text = std::fs::read_to_string(path).map_err(|source| ServerError::ConfigRead {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_toml(&text).map_err(|e| match e {
            ServerError::ConfigParse { message, .. } => ServerError::ConfigParse {
                path: path.to_path_buf(),
                message,
            },
            other => other,
        })
    }

    /// Parses TOML text.
    pub fn from_toml(text: &str) -> Result<Self, ServerError> {
        toml::from_str(text).map_err(|e| ServerError::ConfigParse {
            path: PathBuf::new(),
            message: e.to_string(),
        })
    }

    /// Refuses configurations that would be unsafe or cannot work.
    pub fn validate(&self, listen: SocketAddr) -> Result<(), ServerError> {
        if self.storage.memstore_flush_bytes < 1024 || self.storage.region_split_bytes < 1024 {
            return Err(ServerError::InvalidConfig(
                "storage.memstore_flush_bytes and storage.region_split_bytes must be at least 1024"
                    .into(),
            ));
        }
        if self.max_connections == 0 {
            return Err(ServerError::InvalidConfig(
                "max_connections must be at least 1".into(),
            ));
        }
        match self.auth.method {
            AuthMethod::Trust => {
                if !listen.ip().is_loopback() && !self.auth.allow_trust_on_non_loopback {
                    return Err(ServerError::InvalidConfig(format!(
                        "refusing to start: trust authentication on non-loopback address {listen} \
                         would let anyone on the network connect; configure auth.method = \
                         \"scram-sha-256\" with users, or set auth.allow_trust_on_non_loopback = true"
                    )));
                }
            }
            AuthMethod::ScramSha256 => {
                if self.auth.users.is_empty() {
                    return Err(ServerError::InvalidConfig(
                        "auth.method = \"scram-sha-256\" needs at least one [[auth.users]] entry"
                            .into(),
                    ));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_config_parses_and_validates() {
        let text = include_str!("../../config.example.toml");
        let config = Config::from_toml(text).unwrap();
        config.validate(config.listen).unwrap();
        assert_eq!(config.listen, Config::default().listen);
    }

    #[test]
    fn file_overrides_defaults_and_keeps_the_rest() {
        let config =
            Config::from_toml("max_connections = 7\n[auth]\nmethod = \"trust\"\n").unwrap();
        assert_eq!(config.max_connections, 7);
        assert_eq!(config.data_dir, PathBuf::from("./tidebase-data"));
    }

    #[test]
    fn unknown_keys_are_rejected() {
        assert!(matches!(
            Config::from_toml("listn = \"1.2.3.4:1\""),
            Err(ServerError::ConfigParse { .. })
        ));
    }

    #[test]
    fn trust_on_a_public_address_is_refused_unless_asked_for() {
        let mut config = Config::default();
        let public: SocketAddr = "0.0.0.0:5433".parse().unwrap();
        let err = config.validate(public).unwrap_err();
        assert!(err.to_string().contains("trust authentication"), "{err}");
        config.auth.allow_trust_on_non_loopback = true;
        config.validate(public).unwrap();
    }

    #[test]
    fn scram_without_users_is_refused() {
        let mut config = Config::default();
        config.auth.method = AuthMethod::ScramSha256;
        assert!(config.validate(config.listen).is_err());
    }
}
