//! One socket write per request cycle, as PostgreSQL does.
//!
//! PostgreSQL leaves ParseComplete, BindComplete, RowDescription, DataRow,
//! CommandComplete and the like in its output buffer and writes them out at
//! Sync (with ReadyForQuery) or at an explicit Flush. pgwire's default
//! handlers flush after several of these, so a prepared lookup (Bind,
//! Execute, Sync) cost three writes to the socket and woke the client three
//! times. [`Coalesce`] wraps a connection for the bind, describe and execute
//! handlers and turns the flush after such a message into nothing; Sync and
//! Flush (and everything else, COPY responses among them) still flush.

use std::collections::HashMap;
use std::fmt::Debug;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::{Sink, SinkExt};
use pgwire::api::portal::Portal;
use pgwire::api::stmt::{QueryParser, StoredStatement};
use pgwire::api::store::{Entry, PortalStore};
use pgwire::api::{
    ClientInfo, ClientPortalStore, PgWireConnectionState, SessionExtensions, DEFAULT_NAME,
};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::extendedquery::{Bind, BindComplete, Parse, ParseComplete};
use pgwire::messages::response::TransactionStatus;
use pgwire::messages::startup::SecretKey;
use pgwire::messages::{PgWireBackendMessage, ProtocolVersion};
use pgwire::tokio::tokio_rustls::rustls::pki_types::CertificateDer;

/// A connection whose flushes after in-cycle messages are held back until
/// the cycle's end (see the module docs).
pub struct Coalesce<'a, C> {
    inner: &'a mut C,
    /// The last message sent is one PostgreSQL does not flush after.
    hold: bool,
}

impl<'a, C> Coalesce<'a, C> {
    pub fn new(inner: &'a mut C) -> Self {
        Self { inner, hold: false }
    }
}

/// Messages that are followed, within the same request cycle, by more
/// output and in the end by ReadyForQuery (or answer a Flush).
fn in_cycle(m: &PgWireBackendMessage) -> bool {
    matches!(
        m,
        PgWireBackendMessage::ParseComplete(_)
            | PgWireBackendMessage::BindComplete(_)
            | PgWireBackendMessage::CloseComplete(_)
            | PgWireBackendMessage::ParameterDescription(_)
            | PgWireBackendMessage::RowDescription(_)
            | PgWireBackendMessage::NoData(_)
            | PgWireBackendMessage::DataRow(_)
            | PgWireBackendMessage::CommandComplete(_)
            | PgWireBackendMessage::EmptyQueryResponse(_)
            | PgWireBackendMessage::PortalSuspended(_)
    )
}

impl<C> Sink<PgWireBackendMessage> for Coalesce<'_, C>
where
    C: Sink<PgWireBackendMessage> + Unpin,
{
    type Error = C::Error;

    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), C::Error>> {
        Pin::new(&mut *self.inner).poll_ready(cx)
    }

    fn start_send(mut self: Pin<&mut Self>, item: PgWireBackendMessage) -> Result<(), C::Error> {
        self.hold = in_cycle(&item);
        Pin::new(&mut *self.inner).start_send(item)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), C::Error>> {
        if self.hold {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut *self.inner).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), C::Error>> {
        Pin::new(&mut *self.inner).poll_close(cx)
    }
}

impl<C: ClientPortalStore> ClientPortalStore for Coalesce<'_, C> {
    type PortalStore = C::PortalStore;

    fn portal_store(&self) -> &Self::PortalStore {
        self.inner.portal_store()
    }
}

impl<C: ClientInfo> ClientInfo for Coalesce<'_, C> {
    fn socket_addr(&self) -> SocketAddr {
        self.inner.socket_addr()
    }

    fn is_secure(&self) -> bool {
        self.inner.is_secure()
    }

    fn protocol_version(&self) -> ProtocolVersion {
        self.inner.protocol_version()
    }

    fn set_protocol_version(&mut self, version: ProtocolVersion) {
        self.inner.set_protocol_version(version)
    }

    fn pid_and_secret_key(&self) -> (i32, SecretKey) {
        self.inner.pid_and_secret_key()
    }

    fn set_pid_and_secret_key(&mut self, pid: i32, secret_key: SecretKey) {
        self.inner.set_pid_and_secret_key(pid, secret_key)
    }

    fn state(&self) -> PgWireConnectionState {
        self.inner.state()
    }

    fn set_state(&mut self, new_state: PgWireConnectionState) {
        self.inner.set_state(new_state)
    }

    fn transaction_status(&self) -> TransactionStatus {
        self.inner.transaction_status()
    }

    fn set_transaction_status(&mut self, new_status: TransactionStatus) {
        self.inner.set_transaction_status(new_status)
    }

    fn metadata(&self) -> &HashMap<String, String> {
        self.inner.metadata()
    }

    fn metadata_mut(&mut self) -> &mut HashMap<String, String> {
        self.inner.metadata_mut()
    }

    fn session_extensions(&self) -> &SessionExtensions {
        self.inner.session_extensions()
    }

    fn sni_server_name(&self) -> Option<&str> {
        self.inner.sni_server_name()
    }

    fn client_certificates<'a>(&self) -> Option<&[CertificateDer<'a>]> {
        self.inner.client_certificates()
    }
}

/// Parse: stores the parsed statement under its name (an empty query as
/// an empty statement) and answers ParseComplete without flushing it.
pub async fn parse<C, Q, S>(client: &mut C, message: Parse, parser: Q) -> PgWireResult<()>
where
    C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
    C::PortalStore: PortalStore<Statement = S>,
    C::Error: Debug,
    PgWireError: From<C::Error>,
    Q: QueryParser<Statement = S>,
{
    match StoredStatement::parse(client, &message, parser).await? {
        Some(statement) => client.portal_store().put_statement(Arc::new(statement)),
        None => {
            let name = message.name.as_deref().unwrap_or(DEFAULT_NAME);
            client.portal_store().put_empty_statement(name);
        }
    }
    client
        .feed(PgWireBackendMessage::ParseComplete(ParseComplete::new()))
        .await?;
    Ok(())
}

/// Bind: stores the portal of a prepared statement with its parameters (an
/// empty statement gets an empty portal, and takes no parameters), and
/// answers BindComplete without flushing it.
pub async fn bind<C, S>(client: &mut C, message: Bind) -> PgWireResult<()>
where
    C: ClientPortalStore + Sink<PgWireBackendMessage> + Unpin,
    C::PortalStore: PortalStore<Statement = S>,
    C::Error: Debug,
    PgWireError: From<C::Error>,
    S: Clone,
{
    let statement = message.statement_name.as_deref().unwrap_or(DEFAULT_NAME);
    let portal = message.portal_name.as_deref().unwrap_or(DEFAULT_NAME);
    match client.portal_store().get_statement(statement) {
        Some(Entry::Value(s)) => {
            let p = Portal::try_new(&message, s)?;
            client.portal_store().put_portal(Arc::new(p));
        }
        Some(Entry::Empty) if message.parameters.is_empty() => {
            client.portal_store().put_empty_portal(portal);
        }
        Some(Entry::Empty) => {
            return Err(PgWireError::UserError(Box::new(ErrorInfo::new(
                "ERROR".to_owned(),
                "08P01".to_owned(),
                format!(
                    "bind message supplies {} parameters, but prepared statement \"{statement}\" requires 0",
                    message.parameters.len()
                ),
            ))));
        }
        None => return Err(PgWireError::StatementNotFound(statement.to_owned())),
    }
    client
        .feed(PgWireBackendMessage::BindComplete(BindComplete::new()))
        .await?;
    Ok(())
}
