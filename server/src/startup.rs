//! The startup phase: authentication (trust or SCRAM-SHA-256), the
//! ParameterStatus messages clients read, and refusal when the server is full.

use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::Arc;

use async_trait::async_trait;
use futures::Sink;
use pgwire::api::auth::sasl::scram::{gen_salted_password, ScramAuth};
use pgwire::api::auth::sasl::SASLAuthStartupHandler;
use pgwire::api::auth::{
    finish_authentication, protocol_negotiation, save_startup_parameters_to_metadata, AuthSource,
    LoginInfo, Password, ServerParameterProvider, StartupHandler,
};
use pgwire::api::{
    ClientInfo, ConnectionHandle, ConnectionManager, PidSecretKeyGenerator,
    RandomPidSecretKeyGenerator,
};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};

use crate::config::{AuthMethod, UserConfig};
use crate::session::Session;

/// Salt and iteration count of the SCRAM verifiers derived from configured
/// passwords at start.
const SCRAM_ITERATIONS: usize = 4096;

/// The startup handler for one connection.
pub struct Startup {
    kind: StartupKind,
    params: Arc<Parameters>,
    manager: Arc<ConnectionManager>,
}

enum StartupKind {
    Trust,
    Scram(Box<SASLAuthStartupHandler<Parameters>>),
    /// SQLSTATE and message of the FATAL error every startup gets.
    Reject(&'static str, &'static str),
}

/// Users and their SCRAM verifiers, shared by all connections.
#[derive(Debug)]
pub struct Users {
    salted: HashMap<String, (Vec<u8>, Vec<u8>)>,
}

impl Users {
    pub fn new(users: &[UserConfig]) -> Self {
        let salted = users
            .iter()
            .map(|u| {
                let salt = rand_salt(&u.name);
                let hash = gen_salted_password(&u.password, &salt, SCRAM_ITERATIONS);
                (u.name.clone(), (salt, hash))
            })
            .collect();
        Self { salted }
    }
}

fn rand_salt(seed: &str) -> Vec<u8> {
    let mut salt = Vec::with_capacity(16);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    salt.extend_from_slice(&nanos.to_le_bytes());
    salt.truncate(8);
    salt.extend(seed.bytes().take(8));
    salt
}

#[async_trait]
impl AuthSource for Users {
    async fn get_password(&self, login: &LoginInfo) -> PgWireResult<Password> {
        let user = login.user().unwrap_or_default();
        match self.salted.get(user) {
            Some((salt, hash)) => Ok(Password::new(Some(salt.clone()), hash.clone())),
            None => Err(PgWireError::UserError(Box::new(ErrorInfo::new(
                "FATAL".into(),
                "28P01".into(),
                format!("password authentication failed for user \"{user}\""),
            )))),
        }
    }
}

/// Sends the ParameterStatus values PostgreSQL sends, and applies the
/// client's startup parameters to its session.
pub struct Parameters {
    session: Arc<Session>,
}

impl ServerParameterProvider for Parameters {
    fn server_parameters<C>(&self, client: &C) -> Option<HashMap<String, String>>
    where
        C: ClientInfo,
    {
        let meta = client.metadata();
        self.session
            .apply_startup_parameters(meta.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let s = &self.session.settings;
        let get = |name: &str| s.get(name).unwrap_or_default();
        let mut params = HashMap::new();
        params.insert("server_version".into(), tidebase_catalog::server_version());
        params.insert("server_encoding".into(), "UTF8".into());
        params.insert("client_encoding".into(), "UTF8".into());
        params.insert("DateStyle".into(), get("datestyle"));
        params.insert("TimeZone".into(), get("timezone"));
        params.insert("IntervalStyle".into(), get("intervalstyle"));
        params.insert("integer_datetimes".into(), "on".into());
        params.insert("standard_conforming_strings".into(), "on".into());
        params.insert("is_superuser".into(), "on".into());
        params.insert("default_transaction_read_only".into(), "off".into());
        params.insert("in_hot_standby".into(), "off".into());
        params.insert("application_name".into(), get("application_name"));
        if let Some(user) = meta.get("user") {
            params.insert("session_authorization".into(), user.clone());
        }
        Some(params)
    }
}

impl Startup {
    pub fn new(
        method: AuthMethod,
        users: &Arc<Users>,
        session: Arc<Session>,
        manager: Arc<ConnectionManager>,
    ) -> Self {
        let params = Arc::new(Parameters {
            session: session.clone(),
        });
        let kind = match method {
            AuthMethod::Trust => StartupKind::Trust,
            AuthMethod::ScramSha256 => {
                let mut scram = ScramAuth::new(users.clone());
                scram.set_iterations(SCRAM_ITERATIONS);
                let handler = SASLAuthStartupHandler::new(Arc::new(Parameters { session }))
                    .with_scram(scram)
                    .with_connection_manager(manager.clone());
                StartupKind::Scram(Box::new(handler))
            }
        };
        Self {
            kind,
            params,
            manager,
        }
    }

    /// A handler that answers every startup with a FATAL error and closes.
    pub fn reject(code: &'static str, message: &'static str, session: Arc<Session>) -> Self {
        Self {
            kind: StartupKind::Reject(code, message),
            params: Arc::new(Parameters { session }),
            manager: Arc::new(ConnectionManager::new()),
        }
    }
}

#[async_trait]
impl StartupHandler for Startup {
    async fn on_startup<C>(
        &self,
        client: &mut C,
        message: PgWireFrontendMessage,
    ) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        match &self.kind {
            StartupKind::Scram(handler) => handler.on_startup(client, message).await,
            StartupKind::Reject(code, message) => Err(PgWireError::UserError(Box::new(
                ErrorInfo::new("FATAL".into(), code.to_string(), message.to_string()),
            ))),
            StartupKind::Trust => {
                if let PgWireFrontendMessage::Startup(ref startup) = message {
                    protocol_negotiation(client, startup).await?;
                    save_startup_parameters_to_metadata(client, startup);
                    let (pid, key) = RandomPidSecretKeyGenerator::default().generate(client);
                    client.set_pid_and_secret_key(pid, key.clone());
                    let (handle, guard) = self.manager.register(pid, key);
                    client
                        .session_extensions()
                        .insert::<Arc<ConnectionHandle>>(handle);
                    client.session_extensions().insert(guard);
                    finish_authentication(client, self.params.as_ref()).await?;
                }
                Ok(())
            }
        }
    }
}
