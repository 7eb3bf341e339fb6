//! The simple and extended query protocols: statements are split, session
//! commands answered here, everything else planned and run by DataFusion,
//! and results streamed back in the format the client asked for.

use std::fmt::Debug;
use std::sync::Arc;

use arrow_pg::datatypes::df::deserialize_parameters;
use arrow_pg::datatypes::{encode_recordbatch, into_pg_type};
use async_trait::async_trait;
use datafusion::arrow::array::{AsArray, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, UInt64Type};
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::common::{ParamValues, ScalarValue};
use datafusion::logical_expr::{DdlStatement, Expr, LogicalPlan, WriteOp};
use datafusion::sql::parser::Statement as DfStatement;
use datafusion_pg_catalog::sql::PostgresCompatibilityParser;
use futures::{stream, Sink, SinkExt, StreamExt};
use pgwire::api::copy::CopyHandler;
use pgwire::api::portal::{Format, Portal};
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::api::results::{CopyResponse, FieldInfo, QueryResponse, Response, Tag};
use pgwire::api::stmt::QueryParser;
use pgwire::api::store::PortalStore;
use pgwire::api::{ClientInfo, ClientPortalStore, Type};
use pgwire::error::{PgWireError, PgWireResult};
use pgwire::messages::copy::{CopyData, CopyDone, CopyFail};
use pgwire::messages::extendedquery::{Bind, Describe, Execute, Parse};
use pgwire::messages::startup::ParameterStatus;
use pgwire::messages::PgWireBackendMessage;
use pgwire::types::format::FormatOptions;
use tidebase_catalog::canonical_name;
use tidebase_catalog::table::{LookupTemplate, PointLookup};

use crate::coalesce::Coalesce;
use crate::copy::{CopyCommand, CopyIn};
use crate::ddl::{self, DdlCommand};
use crate::session::{Session, Shutdown};
use crate::sqlstate::{error_info, QueryError};
use crate::statement::{self, SessionCommand};

/// A statement after Parse: what Bind and Execute work from.
#[derive(Debug, Clone)]
pub enum Prepared {
    Session(SessionCommand),
    Ddl(DdlCommand),
    Copy(CopyCommand),
    Plan(Box<PlannedStatement>),
}

/// A statement planned by DataFusion, with its parameters' types in order.
#[derive(Debug, Clone)]
pub struct PlannedStatement {
    plan: LogicalPlan,
    params: Vec<DataType>,
    /// The plan as a point lookup, when it is one: bound to each
    /// execution's parameters, it runs without planning.
    lookup: Option<LookupTemplate>,
    /// PostgreSQL's names for the result columns, sent in RowDescription.
    names: crate::rewrite::ColumnNames,
}

/// Settings whose changes PostgreSQL reports to the client.
const REPORTED_SETTINGS: &[&str] = &[
    "application_name",
    "client_encoding",
    "datestyle",
    "intervalstyle",
    "timezone",
    "standard_conforming_strings",
];

/// Turns SQL text into [`Prepared`] statements for one session.
pub struct Planner {
    session: Arc<Session>,
    sql: Arc<PostgresCompatibilityParser>,
}

impl Planner {
    async fn prepare(&self, sql: &str) -> Result<Option<Prepared>, QueryError> {
        if let Some(cmd) = statement::session_command(sql) {
            return Ok(Some(Prepared::Session(cmd)));
        }
        if let Some(cmd) = ddl::recognize(sql) {
            return Ok(Some(Prepared::Ddl(cmd?)));
        }
        let sql = tidebase_window::exclude::mark(&ddl::preprocess(sql));
        let mut statements = self.sql.parse(&sql)?;
        match statements.len() {
            0 => return Ok(None),
            1 => {}
            _ => {
                return Err(QueryError::Parse(
                    datafusion::sql::sqlparser::parser::ParserError::ParserError(
                        "cannot insert multiple commands into a prepared statement".into(),
                    ),
                ))
            }
        }
        let mut stmt = statements.remove(0);
        if let Some(cmd) = ddl::from_statement(&stmt) {
            return Ok(Some(Prepared::Ddl(cmd?)));
        }
        if let Some(cmd) = crate::copy::from_statement(&stmt) {
            return Ok(Some(Prepared::Copy(cmd?)));
        }
        if let Some(sql) = ddl::on_conflict_do_nothing(&stmt, &self.session) {
            let mut rewritten = self.sql.parse(&sql?)?;
            if rewritten.len() == 1 {
                stmt = rewritten.remove(0);
            }
        }
        let (plan, names) = plan_statement(&self.session, stmt).await?;
        let params = parameter_types(&plan)?;
        Ok(Some(Prepared::Plan(Box::new(PlannedStatement {
            lookup: LookupTemplate::of(&plan),
            plan,
            params,
            names,
        }))))
    }
}

/// Plans a parsed query: our AST rewrites, DataFusion's planner, then
/// PostgreSQL's result types. Returns the plan and PostgreSQL's names for
/// its result columns.
pub(crate) async fn plan_statement(
    session: &Session,
    mut stmt: datafusion::sql::sqlparser::ast::Statement,
) -> Result<(LogicalPlan, crate::rewrite::ColumnNames), QueryError> {
    crate::rewrite::aggregate_scalar_subqueries(&mut stmt);
    let names = crate::rewrite::ColumnNames::of(&stmt);
    tidebase_window::exclude::rewrite(&mut stmt)?;
    let plan = session
        .ctx
        .state()
        .statement_to_plan(DfStatement::Statement(Box::new(stmt)))
        .await?;
    Ok((postgres_result_types(plan)?, names))
}

/// PostgreSQL has no unsigned integers: `rank()` and `row_number()` are
/// bigint there, UInt64 in DataFusion (which the encoder would send as
/// numeric). A query whose result has such columns gets a projection that
/// casts them to bigint, under its final ORDER BY and LIMIT: a projection
/// above a sort lets the planner spread the sorted rows over partitions
/// again (a round-robin repartition for the projection), which loses
/// their order.
fn postgres_result_types(plan: LogicalPlan) -> Result<LogicalPlan, QueryError> {
    match plan {
        LogicalPlan::Sort(sort) => {
            let input = postgres_result_types(Arc::unwrap_or_clone(sort.input))?;
            Ok(datafusion::logical_expr::LogicalPlanBuilder::from(input)
                .sort_with_limit(sort.expr, sort.fetch)?
                .build()?)
        }
        LogicalPlan::Limit(datafusion::logical_expr::Limit { skip, fetch, input }) => {
            let input = postgres_result_types(Arc::unwrap_or_clone(input))?;
            Ok(LogicalPlan::Limit(datafusion::logical_expr::Limit {
                skip,
                fetch,
                input: Arc::new(input),
            }))
        }
        plan => cast_unsigned(plan),
    }
}

fn cast_unsigned(plan: LogicalPlan) -> Result<LogicalPlan, QueryError> {
    if !returns_rows(&plan)
        || !plan
            .schema()
            .fields()
            .iter()
            .any(|f| matches!(f.data_type(), DataType::UInt64 | DataType::UInt32))
    {
        return Ok(plan);
    }
    let exprs: Vec<Expr> = plan
        .schema()
        .iter()
        .map(|(qualifier, field)| {
            let column = Expr::Column(datafusion::common::Column::new(
                qualifier.cloned(),
                field.name(),
            ));
            match field.data_type() {
                DataType::UInt64 | DataType::UInt32 => {
                    datafusion::logical_expr::cast(column, DataType::Int64)
                        .alias_qualified(qualifier.cloned(), field.name())
                }
                _ => column,
            }
        })
        .collect();
    Ok(datafusion::logical_expr::LogicalPlanBuilder::from(plan)
        .project(exprs)?
        .build()?)
}

/// Parameter types in `$n` order; a parameter the planner could not type is
/// text, as PostgreSQL treats an unknown literal.
fn parameter_types(plan: &LogicalPlan) -> Result<Vec<DataType>, QueryError> {
    let mut found = plan.get_parameter_types()?;
    // `$1::bigint` leaves the placeholder untyped in DataFusion; PostgreSQL
    // types it by the cast.
    let mut cast_types = std::collections::HashMap::new();
    plan.apply_with_subqueries(|node| {
        node.apply_expressions(|e| {
            e.apply(|e| {
                let cast = match e {
                    Expr::Cast(c) => Some((c.expr.as_ref(), c.field.data_type())),
                    Expr::TryCast(c) => Some((c.expr.as_ref(), c.field.data_type())),
                    _ => None,
                };
                if let Some((Expr::Placeholder(p), ty)) = cast {
                    cast_types.entry(p.id.clone()).or_insert_with(|| ty.clone());
                }
                Ok(TreeNodeRecursion::Continue)
            })
        })
    })?;
    for (id, ty) in found.iter_mut() {
        if ty.is_none() {
            *ty = cast_types.get(id).cloned();
        }
    }
    let mut out = Vec::new();
    for (name, ty) in found {
        let Some(index) = name.strip_prefix('$').and_then(|n| n.parse::<usize>().ok()) else {
            return Err(QueryError::NotSupported {
                what: format!("parameter {name}"),
            });
        };
        if index == 0 {
            return Err(QueryError::NotSupported {
                what: "parameter $0".into(),
            });
        }
        if out.len() < index {
            out.resize(index, DataType::Utf8);
        }
        out[index - 1] = ty.unwrap_or(DataType::Utf8);
    }
    Ok(out)
}

/// Casts each bound value to the type the statement expects, strictly: a
/// value that does not fit is an error (22P02), never a silent NULL.
fn coerce_parameters(values: ParamValues, types: &[DataType]) -> Result<ParamValues, QueryError> {
    let ParamValues::List(list) = values else {
        return Ok(values);
    };
    let options = datafusion::arrow::compute::CastOptions {
        safe: false,
        ..Default::default()
    };
    let mut out = Vec::with_capacity(list.len());
    for (i, mut v) in list.into_iter().enumerate() {
        if let Some(target) = types.get(i) {
            if v.value.data_type() != *target && !v.value.is_null() {
                v.value = v
                    .value
                    .cast_to_with_options(target, &options)
                    .map_err(|e| QueryError::InvalidParameter {
                        index: i + 1,
                        reason: e.message().to_string(),
                    })?;
            } else if v.value.is_null() {
                v.value = ScalarValue::try_from(target)?;
            }
        }
        out.push(v);
    }
    Ok(ParamValues::List(out))
}

fn result_fields(prepared: &Prepared, format: &Format) -> PgWireResult<Vec<FieldInfo>> {
    match prepared {
        Prepared::Session(SessionCommand::Show(name)) => Ok(vec![FieldInfo::new(
            show_column_name(name),
            None,
            None,
            Type::TEXT,
            format.format_for(0),
        )]),
        Prepared::Session(SessionCommand::ShowAll) => Ok(["name", "setting", "description"]
            .iter()
            .enumerate()
            .map(|(i, n)| {
                FieldInfo::new(n.to_string(), None, None, Type::TEXT, format.format_for(i))
            })
            .collect()),
        Prepared::Session(_) | Prepared::Ddl(_) | Prepared::Copy(_) => Ok(vec![]),
        Prepared::Plan(p) if returns_rows(&p.plan) => {
            crate::text::pg_fields(&p.names.apply(p.plan.schema().as_arrow()), format, None)
        }
        Prepared::Plan(_) => Ok(vec![]),
    }
}

fn show_column_name(name: &str) -> String {
    canonical_name(&tidebase_catalog::SessionSettings::normalize(name))
}

fn returns_rows(plan: &LogicalPlan) -> bool {
    !matches!(
        plan,
        LogicalPlan::Ddl(_)
            | LogicalPlan::Dml(_)
            | LogicalPlan::Statement(_)
            | LogicalPlan::Copy(_)
    )
}

#[async_trait]
impl QueryParser for Planner {
    type Statement = Prepared;

    async fn parse_sql<C>(
        &self,
        _client: &C,
        sql: &str,
        _types: &[Option<Type>],
    ) -> PgWireResult<Option<Prepared>>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        Ok(self.prepare(sql).await?)
    }

    fn get_parameter_types(&self, stmt: &Prepared) -> PgWireResult<Vec<Type>> {
        match stmt {
            Prepared::Plan(p) => p.params.iter().map(into_pg_type).collect(),
            Prepared::Session(_) | Prepared::Ddl(_) | Prepared::Copy(_) => Ok(vec![]),
        }
    }

    fn get_result_schema(
        &self,
        stmt: &Prepared,
        column_format: Option<&Format>,
    ) -> PgWireResult<Vec<FieldInfo>> {
        result_fields(stmt, column_format.unwrap_or(&Format::UnifiedText))
    }
}

/// Runs statements for one connection.
pub struct QueryHandler {
    session: Arc<Session>,
    planner: Arc<Planner>,
    shutdown: Arc<Shutdown>,
    /// The COPY FROM STDIN in progress, if any.
    copy: parking_lot::Mutex<Option<CopyIn>>,
}

impl QueryHandler {
    pub fn new(
        session: Arc<Session>,
        sql: Arc<PostgresCompatibilityParser>,
        shutdown: Arc<Shutdown>,
    ) -> Self {
        let planner = Arc::new(Planner {
            session: session.clone(),
            sql,
        });
        Self {
            session,
            planner,
            shutdown,
            copy: parking_lot::Mutex::new(None),
        }
    }

    async fn execute<C>(
        &self,
        client: &mut C,
        prepared: &Prepared,
        format: &Format,
    ) -> Result<Response, QueryError>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        match prepared {
            Prepared::Session(cmd) => self.session_command(client, cmd, format).await,
            Prepared::Ddl(cmd) => Ok(Response::Execution(ddl::execute(&self.session, cmd).await?)),
            Prepared::Copy(CopyCommand::In {
                table,
                columns,
                format,
            }) => {
                let (state, n) = CopyIn::start(&self.session, table, columns, format.clone())?;
                *self.copy.lock() = Some(state);
                Ok(Response::CopyIn(CopyResponse::new(
                    0,
                    n,
                    futures::stream::empty(),
                )))
            }
            Prepared::Copy(CopyCommand::Out { query, format }) => {
                let (n, stream) = crate::copy::copy_out(&self.session, query, format).await?;
                Ok(Response::CopyOut(CopyResponse::new(0, n, stream)))
            }
            Prepared::Plan(p) => {
                let options = Arc::new(FormatOptions::from_client_metadata(client.metadata()));
                if let Some(lookup) = p.lookup.as_ref().and_then(|t| t.bind(None)) {
                    return Self::run_lookup(lookup, &p.names, format, options).await;
                }
                self.run_plan(p.plan.clone(), &p.names, format, options)
                    .await
            }
        }
    }

    async fn run_plan(
        &self,
        plan: LogicalPlan,
        names: &crate::rewrite::ColumnNames,
        format: &Format,
        options: Arc<FormatOptions>,
    ) -> Result<Response, QueryError> {
        if let LogicalPlan::Copy(_) = plan {
            return Err(QueryError::NotSupported {
                what: "COPY to a server-side file".into(),
            });
        }
        let tag = command_tag(&plan);
        let df = self.session.ctx.execute_logical_plan(plan.clone()).await?;
        if let Some(tag) = tag {
            let rows = match &plan {
                LogicalPlan::Dml(_) => Some(affected_rows(df.collect().await?)),
                _ => {
                    df.collect().await?;
                    None
                }
            };
            let tag = match (rows, &plan) {
                (Some(n), LogicalPlan::Dml(d)) if matches!(d.op, WriteOp::Insert(_)) => {
                    Tag::new(tag).with_oid(0).with_rows(n)
                }
                (Some(n), _) => Tag::new(tag).with_rows(n),
                (None, _) => Tag::new(tag),
            };
            return Ok(Response::Execution(tag));
        }
        let schema = names.apply(df.schema().as_arrow());
        let stream = df.execute_stream().await?;
        Ok(Response::Query(
            stream_response(&schema, stream, format, options).await?,
        ))
    }

    /// Runs a point lookup: one get, no plan.
    async fn run_lookup(
        lookup: PointLookup,
        names: &crate::rewrite::ColumnNames,
        format: &Format,
        options: Arc<FormatOptions>,
    ) -> Result<Response, QueryError> {
        let schema = lookup.schema();
        let renamed = names.apply(&schema);
        // One get reads a few pages of each file whose bloom filter lets
        // the row through: run it here, as handing it to a blocking thread
        // costs more than the read.
        let batches = lookup.run()?;
        let stream = futures::stream::iter(batches.into_iter().map(Ok));
        let stream = Box::pin(
            datafusion::physical_plan::stream::RecordBatchStreamAdapter::new(schema, stream),
        );
        Ok(Response::Query(
            stream_response(&renamed, stream, format, options).await?,
        ))
    }

    async fn session_command<C>(
        &self,
        client: &mut C,
        cmd: &SessionCommand,
        format: &Format,
    ) -> Result<Response, QueryError>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let settings = &self.session.settings;
        let tag = Tag::new(cmd.tag());
        match cmd {
            SessionCommand::Begin => return Ok(Response::TransactionStart(tag)),
            SessionCommand::Commit | SessionCommand::Rollback => {
                return Ok(Response::TransactionEnd(tag))
            }
            SessionCommand::Set { name, value } => {
                let key = tidebase_catalog::SessionSettings::normalize(name);
                match value {
                    Some(v) => settings.set(&key, &validate_setting(&key, v)?),
                    None => settings.reset(&key),
                }
                if REPORTED_SETTINGS.contains(&key.as_str()) {
                    let value = settings.get(&key)?;
                    report(client, &key, value).await;
                }
            }
            SessionCommand::Show(name) => {
                let value = settings.get(name)?;
                let batch = text_batch(&[(&show_column_name(name), vec![value])]);
                return Ok(Response::Query(batch_response(batch, format)?));
            }
            SessionCommand::ShowAll => {
                let all = settings.all();
                let names = all.iter().map(|(k, _)| canonical_name(k)).collect();
                let values = all.iter().map(|(_, v)| v.clone()).collect();
                let descriptions = all.iter().map(|_| String::new()).collect();
                let batch = text_batch(&[
                    ("name", names),
                    ("setting", values),
                    ("description", descriptions),
                ]);
                return Ok(Response::Query(batch_response(batch, format)?));
            }
            SessionCommand::Reset(name) => settings.reset(name),
            SessionCommand::ResetAll | SessionCommand::DiscardAll => settings.reset_all(),
            SessionCommand::Deallocate(Some(name)) => client.portal_store().rm_statement(name),
            SessionCommand::Deallocate(None)
            | SessionCommand::Savepoint(_)
            | SessionCommand::Release(_)
            | SessionCommand::RollbackTo(_)
            | SessionCommand::SetTransaction
            | SessionCommand::CloseCursor(_)
            | SessionCommand::Listen
            | SessionCommand::Unlisten => {}
        }
        Ok(Response::Execution(tag))
    }
}

/// Rejects values PostgreSQL would reject for the settings drivers send.
fn validate_setting(name: &str, value: &str) -> Result<String, QueryError> {
    let invalid = || QueryError::InvalidSettingValue {
        name: name.to_string(),
        value: value.to_string(),
    };
    match name {
        "client_encoding" => {
            let v = value.to_ascii_uppercase().replace(['-', '_'], "");
            if v == "UTF8" || v == "UNICODE" {
                Ok("UTF8".into())
            } else {
                Err(invalid())
            }
        }
        "extra_float_digits" => match value.parse::<i32>() {
            Ok(n) if (-15..=3).contains(&n) => Ok(value.to_string()),
            _ => Err(invalid()),
        },
        "datestyle" => {
            if value.to_ascii_uppercase().starts_with("ISO") {
                Ok(if value.contains(',') {
                    value.to_string()
                } else {
                    format!("{value}, MDY")
                })
            } else {
                Err(QueryError::NotSupported {
                    what: format!("DateStyle {value}"),
                })
            }
        }
        _ => Ok(value.to_string()),
    }
}

async fn report<C>(client: &mut C, key: &str, value: String)
where
    C: Sink<PgWireBackendMessage> + Unpin + Send,
{
    let msg = ParameterStatus::new(canonical_name(key), value);
    // A client that went away will surface on the next read.
    let _ = client
        .feed(PgWireBackendMessage::ParameterStatus(msg))
        .await;
}

/// The command tag for a statement that returns no rows, or `None` for one
/// that does.
fn command_tag(plan: &LogicalPlan) -> Option<&'static str> {
    match plan {
        LogicalPlan::Dml(d) => Some(match d.op {
            WriteOp::Insert(_) => "INSERT",
            WriteOp::Delete => "DELETE",
            WriteOp::Update => "UPDATE",
            WriteOp::Ctas => "SELECT",
            WriteOp::Truncate => "TRUNCATE TABLE",
            _ => "OK",
        }),
        LogicalPlan::Ddl(d) => Some(match d {
            DdlStatement::CreateExternalTable(_) | DdlStatement::CreateMemoryTable(_) => {
                "CREATE TABLE"
            }
            DdlStatement::CreateView(_) => "CREATE VIEW",
            DdlStatement::CreateCatalogSchema(_) => "CREATE SCHEMA",
            DdlStatement::CreateCatalog(_) => "CREATE DATABASE",
            DdlStatement::CreateIndex(_) => "CREATE INDEX",
            DdlStatement::DropTable(_) => "DROP TABLE",
            DdlStatement::DropView(_) => "DROP VIEW",
            DdlStatement::DropCatalogSchema(_) => "DROP SCHEMA",
            DdlStatement::CreateFunction(_) => "CREATE FUNCTION",
            DdlStatement::DropFunction(_) => "DROP FUNCTION",
        }),
        LogicalPlan::Statement(_) => Some("OK"),
        _ => None,
    }
}

pub(crate) fn affected_rows(batches: Vec<RecordBatch>) -> usize {
    batches
        .iter()
        .filter_map(|b| b.column_by_name("count"))
        .filter_map(|c| {
            c.as_primitive_opt::<UInt64Type>()
                .map(|a| (0..a.len()).map(|i| a.value(i)).sum::<u64>())
        })
        .sum::<u64>()
        .try_into()
        .unwrap_or(usize::MAX)
}

fn text_batch(columns: &[(&str, Vec<String>)]) -> RecordBatch {
    let schema = Arc::new(Schema::new(
        columns
            .iter()
            .map(|(n, _)| Field::new(*n, DataType::Utf8, true))
            .collect::<Vec<_>>(),
    ));
    let arrays = columns
        .iter()
        .map(|(_, v)| Arc::new(StringArray::from(v.clone())) as _)
        .collect();
    // Columns of equal length and matching types by construction.
    RecordBatch::try_new(schema, arrays)
        .unwrap_or_else(|_| RecordBatch::new_empty(Arc::new(Schema::empty())))
}

fn batch_response(batch: RecordBatch, format: &Format) -> Result<QueryResponse, QueryError> {
    let fields =
        Arc::new(crate::text::pg_fields(batch.schema().as_ref(), format, None).map_err(internal)?);
    let rows: Vec<_> = encode_recordbatch(fields.clone(), batch).collect();
    Ok(QueryResponse::new(fields, stream::iter(rows)))
}

fn internal(e: PgWireError) -> QueryError {
    QueryError::NotSupported {
        what: e.to_string(),
    }
}

/// A bug that panics while computing a batch fails the statement (XX000),
/// not the connection: the stream yields the error and ends.
fn panics_as_errors<S, T>(
    batches: S,
) -> impl futures::Stream<Item = datafusion::error::Result<T>> + Unpin
where
    S: futures::Stream<Item = datafusion::error::Result<T>> + Unpin,
{
    std::panic::AssertUnwindSafe(batches)
        .catch_unwind()
        .map(|item| match item {
            Ok(batch) => batch,
            Err(panic) => {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                Err(datafusion::error::DataFusionError::Internal(format!(
                    "the query failed on a bug: {what}"
                )))
            }
        })
}

/// Streams a DataFusion result. The first batch is computed before the
/// response starts, so errors that show up at once (and the work of
/// blocking operators) happen inside the cancellable part of the request.
async fn stream_response(
    schema: &Schema,
    batches: datafusion::execution::SendableRecordBatchStream,
    format: &Format,
    options: Arc<FormatOptions>,
) -> Result<QueryResponse, QueryError> {
    let fields = Arc::new(crate::text::pg_fields(schema, format, Some(options)).map_err(internal)?);
    let mut batches = panics_as_errors(batches);
    let first = batches.next().await.transpose()?;
    let rest = batches.map(|b| b.map_err(|e| PgWireError::from(QueryError::from(e))));
    let all = stream::iter(first.map(Ok)).chain(rest);
    let encoder_fields = fields.clone();
    let rows = all.flat_map(move |batch| {
        let rows: Vec<PgWireResult<_>> = match batch {
            Ok(batch) => match crate::text::postgres_columns(batch, &encoder_fields) {
                Ok(batch) => encode_recordbatch(encoder_fields.clone(), batch).collect(),
                Err(e) => vec![Err(PgWireError::from(QueryError::from(
                    datafusion::error::DataFusionError::from(e),
                )))],
            },
            Err(e) => vec![Err(e)],
        };
        stream::iter(rows)
    });
    Ok(QueryResponse::new(fields, rows))
}

#[async_trait]
impl SimpleQueryHandler for QueryHandler {
    async fn do_query<C>(&self, client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let _running = self.shutdown.enter()?;
        let mut responses = Vec::new();
        for sql in statement::split(query) {
            tracing::debug!(session = self.session.id, sql, "simple query");
            let result = match self.planner.prepare(sql).await {
                Ok(Some(prepared)) => self.execute(client, &prepared, &Format::UnifiedText).await,
                Ok(None) => Ok(Response::EmptyQuery),
                Err(e) => Err(e),
            };
            match result {
                Ok(r) => responses.push(r),
                Err(e) => {
                    tracing::debug!(session = self.session.id, error = %e, "statement failed");
                    responses.push(Response::Error(Box::new(error_info(&e))));
                    break;
                }
            }
        }
        if responses.is_empty() {
            responses.push(Response::EmptyQuery);
        }
        Ok(responses)
    }
}

#[async_trait]
impl ExtendedQueryHandler for QueryHandler {
    type Statement = Prepared;
    type QueryParser = Planner;

    fn query_parser(&self) -> Arc<Planner> {
        self.planner.clone()
    }

    // Bind, Describe and Execute leave their answers in the output buffer;
    // Sync or Flush writes them out (see `coalesce`).
    async fn on_parse<C>(&self, client: &mut C, message: Parse) -> PgWireResult<()>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Prepared>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        crate::coalesce::parse(client, message, self.query_parser()).await
    }

    async fn on_bind<C>(&self, client: &mut C, message: Bind) -> PgWireResult<()>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Prepared>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        crate::coalesce::bind(client, message).await
    }

    async fn on_describe<C>(&self, client: &mut C, message: Describe) -> PgWireResult<()>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Prepared>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        self._on_describe(&mut Coalesce::new(client), message).await
    }

    async fn on_execute<C>(&self, client: &mut C, message: Execute) -> PgWireResult<()>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Prepared>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        self._on_execute(&mut Coalesce::new(client), message).await
    }

    async fn do_query<C>(
        &self,
        client: &mut C,
        portal: &Portal<Prepared>,
        _max_rows: usize,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Prepared>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let _running = self.shutdown.enter()?;
        let prepared = &portal.statement.statement;
        let format = &portal.result_column_format;
        let response = match prepared {
            Prepared::Plan(p) if !p.params.is_empty() || portal.parameter_len() > 0 => {
                let types: Vec<Option<&DataType>> = p.params.iter().map(Some).collect();
                let values = coerce_parameters(deserialize_parameters(portal, &types)?, &p.params)?;
                let options = Arc::new(FormatOptions::from_client_metadata(client.metadata()));
                if let Some(lookup) = p.lookup.as_ref().and_then(|t| t.bind(Some(&values))) {
                    return Ok(Self::run_lookup(lookup, &p.names, format, options).await?);
                }
                let plan = p
                    .plan
                    .clone()
                    .replace_params_with_values(&values)
                    .map_err(QueryError::from)?;
                self.run_plan(plan, &p.names, format, options).await
            }
            other => self.execute(client, other, format).await,
        };
        Ok(response?)
    }
}

#[async_trait]
impl CopyHandler for QueryHandler {
    async fn on_copy_data<C>(&self, _client: &mut C, data: CopyData) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        if let Some(state) = self.copy.lock().as_mut() {
            state.data(&data.data);
        }
        Ok(())
    }

    async fn on_copy_done<C>(&self, client: &mut C, _done: CopyDone) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let Some(state) = self.copy.lock().take() else {
            return Err(QueryError::NotSupported {
                what: "CopyDone without a COPY in progress".into(),
            }
            .into());
        };
        let rows = tokio::task::spawn_blocking(move || state.finish())
            .await
            .map_err(|e| QueryError::NotSupported {
                what: format!("a COPY task that failed ({e})"),
            })??;
        let tag = Tag::new("COPY").with_rows(usize::try_from(rows).unwrap_or(usize::MAX));
        client
            .send(PgWireBackendMessage::CommandComplete(tag.into()))
            .await?;
        Ok(())
    }

    async fn on_copy_fail<C>(&self, _client: &mut C, fail: CopyFail) -> PgWireError
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        self.copy.lock().take();
        QueryError::Copy {
            code: "57014",
            message: format!("COPY from stdin failed: {}", fail.message),
        }
        .into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panicking_stream_ends_with_an_internal_error() {
        let items = stream::iter([1, 2, 3]).map(|i| {
            assert!(i < 2, "batch {i} is broken");
            Ok::<_, datafusion::error::DataFusionError>(i)
        });
        let got: Vec<_> = panics_as_errors(items).collect().await;
        assert_eq!(got.len(), 2, "the stream ends after the panic");
        assert_eq!(got[0].as_ref().ok(), Some(&1));
        let err = got[1].as_ref().unwrap_err();
        assert!(matches!(
            err,
            datafusion::error::DataFusionError::Internal(_)
        ));
        assert!(err.to_string().contains("batch 2 is broken"), "{err}");
    }
}
