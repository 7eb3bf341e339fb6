//! COPY over the wire: `COPY t [(cols)] FROM STDIN` (text and CSV) into a
//! staged, all-or-nothing bulk load, and `COPY t | (query) TO STDOUT`.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, BinaryBuilder, RecordBatch, StringArray};
use datafusion::arrow::compute::{cast_with_options, CastOptions};
use datafusion::arrow::datatypes::{DataType, FieldRef, Schema};
use datafusion::arrow::util::display::FormatOptions as ArrowFormat;
use datafusion::sql::sqlparser::ast::{
    CopyLegacyCsvOption, CopyLegacyOption, CopyOption, CopySource, CopyTarget, Statement,
};
use futures::StreamExt;
use pgwire::messages::copy::CopyData;
use tidebase_catalog::table::codec::arrow_type;
use tidebase_catalog::table::provider::CopyStage;
use tidebase_catalog::table::{SqlType, TableDef};
use tidebase_catalog::topic::TopicStage;
use tidebase_catalog::CatalogError;

use crate::session::Session;
use crate::sqlstate::QueryError;

/// Rows per staged chunk.
const CHUNK_ROWS: usize = 8192;

/// How COPY data is laid out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyFormat {
    pub csv: bool,
    pub delimiter: u8,
    pub null: String,
    pub header: bool,
    pub quote: u8,
    pub escape: u8,
}

impl CopyFormat {
    fn text() -> Self {
        Self {
            csv: false,
            delimiter: b'\t',
            null: "\\N".into(),
            header: false,
            quote: b'"',
            escape: b'"',
        }
    }

    fn make_csv(&mut self) {
        if !self.csv {
            self.csv = true;
            self.delimiter = b',';
            self.null = String::new();
        }
    }
}

#[derive(Debug, Clone)]
pub enum CopyCommand {
    In {
        table: String,
        columns: Vec<String>,
        format: CopyFormat,
    },
    Out {
        query: String,
        format: CopyFormat,
    },
}

fn one_byte(c: char, what: &str) -> Result<u8, QueryError> {
    u8::try_from(u32::from(c))
        .ok()
        .filter(|b| b.is_ascii())
        .ok_or_else(|| QueryError::NotSupported {
            what: format!("a non-ASCII COPY {what}"),
        })
}

/// The COPY command of a parsed statement, if it is one.
pub fn from_statement(stmt: &Statement) -> Option<Result<CopyCommand, QueryError>> {
    let Statement::Copy {
        source,
        to,
        target,
        options,
        legacy_options,
        ..
    } = stmt
    else {
        return None;
    };
    Some((|| {
        let mut format = CopyFormat::text();
        // FORMAT first: it sets the defaults the other options override.
        for o in options {
            if let CopyOption::Format(f) = o {
                match f.value.to_ascii_lowercase().as_str() {
                    "csv" => format.make_csv(),
                    "text" => {}
                    other => {
                        return Err(QueryError::NotSupported {
                            what: format!("COPY format {other}"),
                        })
                    }
                }
            }
        }
        for o in legacy_options {
            if let CopyLegacyOption::Csv(_) = o {
                format.make_csv();
            }
        }
        for o in options {
            match o {
                CopyOption::Format(_) => {}
                CopyOption::Delimiter(c) => format.delimiter = one_byte(*c, "delimiter")?,
                CopyOption::Null(n) => format.null = n.clone(),
                CopyOption::Header(h) => format.header = *h,
                CopyOption::Quote(c) => format.quote = one_byte(*c, "quote")?,
                CopyOption::Escape(c) => format.escape = one_byte(*c, "escape")?,
                CopyOption::Encoding(e)
                    if e.eq_ignore_ascii_case("utf8") || e.eq_ignore_ascii_case("utf-8") => {}
                other => {
                    return Err(QueryError::NotSupported {
                        what: format!("COPY option {other}"),
                    })
                }
            }
        }
        for o in legacy_options {
            match o {
                CopyLegacyOption::Csv(csv) => {
                    for c in csv {
                        match c {
                            CopyLegacyCsvOption::Header => format.header = true,
                            CopyLegacyCsvOption::Quote(q) => format.quote = one_byte(*q, "quote")?,
                            CopyLegacyCsvOption::Escape(q) => {
                                format.escape = one_byte(*q, "escape")?
                            }
                            other => {
                                return Err(QueryError::NotSupported {
                                    what: format!("COPY option {other}"),
                                })
                            }
                        }
                    }
                }
                CopyLegacyOption::Delimiter(c) => format.delimiter = one_byte(*c, "delimiter")?,
                CopyLegacyOption::Null(n) => format.null = n.clone(),
                other => {
                    return Err(QueryError::NotSupported {
                        what: format!("COPY option {other}"),
                    })
                }
            }
        }
        match (to, target, source) {
            (
                false,
                CopyTarget::Stdin,
                CopySource::Table {
                    table_name,
                    columns,
                },
            ) => {
                let table = table_name
                    .0
                    .last()
                    .and_then(|p| p.as_ident())
                    .map(|i| i.value.clone())
                    .unwrap_or_default();
                Ok(CopyCommand::In {
                    table,
                    columns: columns.iter().map(|c| c.value.clone()).collect(),
                    format,
                })
            }
            (
                true,
                CopyTarget::Stdout,
                CopySource::Table {
                    table_name,
                    columns,
                },
            ) => {
                let cols = if columns.is_empty() {
                    "*".to_string()
                } else {
                    columns
                        .iter()
                        .map(|c| c.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                };
                Ok(CopyCommand::Out {
                    query: format!("SELECT {cols} FROM {table_name}"),
                    format,
                })
            }
            (true, CopyTarget::Stdout, CopySource::Query(q)) => Ok(CopyCommand::Out {
                query: q.to_string(),
                format,
            }),
            _ => Err(QueryError::NotSupported {
                what: "COPY to or from a server-side file or program (use STDIN / STDOUT)".into(),
            }),
        }
    })())
}

/// Where a COPY FROM STDIN goes: a region table or a topic.
enum Stage {
    Table(Box<CopyStage>),
    Topic(TopicStage),
}

impl Stage {
    fn rows(&self) -> u64 {
        match self {
            Stage::Table(s) => s.rows(),
            Stage::Topic(s) => s.rows(),
        }
    }
    fn add(&mut self, batch: &RecordBatch) -> datafusion::error::Result<()> {
        match self {
            Stage::Table(s) => s.add(batch),
            Stage::Topic(s) => s.add(batch),
        }
    }
    fn commit(self) -> datafusion::error::Result<u64> {
        match self {
            Stage::Table(s) => s.commit(),
            Stage::Topic(s) => s.commit(),
        }
    }
}

/// A COPY FROM STDIN in progress on one connection.
pub struct CopyIn {
    table: String,
    def: TableDef,
    /// Table column of each field.
    targets: Vec<usize>,
    format: CopyFormat,
    stage: Stage,
    /// Bytes of an unfinished line.
    pending: Vec<u8>,
    /// Physical lines seen.
    line: u64,
    header_pending: bool,
    /// Fields of the current CSV record (which may span lines).
    record: Vec<Option<String>>,
    field: Vec<u8>,
    in_quotes: bool,
    quoted: bool,
    after_quote: bool,
    escape_next: bool,
    record_line: u64,
    chunk: Vec<Vec<Option<String>>>,
    chunk_lines: Vec<u64>,
    ended: bool,
    pub error: Option<QueryError>,
}

fn copy_error(code: &'static str, message: String) -> QueryError {
    QueryError::Copy { code, message }
}

impl CopyIn {
    pub fn start(
        session: &Session,
        table: &str,
        columns: &[String],
        format: CopyFormat,
    ) -> Result<(Self, usize), QueryError> {
        let (def, stage, own_columns) = match session.catalog.user_schema().get(table) {
            Some(t) => (
                t.def.clone(),
                Stage::Table(Box::new(t.stage()?)),
                t.def.columns.len(),
            ),
            None => {
                let t = session
                    .catalog
                    .topics()
                    .get(table)
                    .filter(|_| !table.starts_with(tidebase_catalog::topic::INTERNAL_PREFIX))
                    .ok_or_else(|| CatalogError::TableNotFound(table.to_string()))?;
                (t.copy_def(), Stage::Topic(t.stage()?), t.copy_columns())
            }
        };
        let targets = if columns.is_empty() {
            (0..own_columns).collect()
        } else {
            columns
                .iter()
                .map(|c| {
                    def.column(c)
                        .ok_or_else(|| QueryError::from(CatalogError::ColumnNotFound(c.clone())))
                })
                .collect::<Result<Vec<_>, _>>()?
        };
        let n = targets.len();
        Ok((
            Self {
                table: table.to_string(),
                def,
                targets,
                header_pending: format.header,
                format,
                stage,
                pending: Vec::new(),
                line: 0,
                record: Vec::new(),
                field: Vec::new(),
                in_quotes: false,
                quoted: false,
                after_quote: false,
                escape_next: false,
                record_line: 1,
                chunk: Vec::new(),
                chunk_lines: Vec::new(),
                ended: false,
                error: None,
            },
            n,
        ))
    }

    /// Takes more bytes; errors are kept for CopyDone.
    pub fn data(&mut self, bytes: &[u8]) {
        if self.error.is_some() || self.ended {
            return;
        }
        if let Err(e) = self.feed(bytes) {
            self.error = Some(e);
        }
    }

    fn feed(&mut self, bytes: &[u8]) -> Result<(), QueryError> {
        if self.format.csv {
            for &b in bytes {
                self.csv_byte(b)?;
                if self.ended {
                    break;
                }
            }
            return Ok(());
        }
        self.pending.extend_from_slice(bytes);
        let mut start = 0;
        while let Some(pos) = self.pending[start..].iter().position(|&b| b == b'\n') {
            let line = self.pending[start..start + pos].to_vec();
            start += pos + 1;
            self.text_line(&line)?;
            if self.ended {
                break;
            }
        }
        self.pending.drain(..start);
        Ok(())
    }

    fn text_line(&mut self, line: &[u8]) -> Result<(), QueryError> {
        self.line += 1;
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line == b"\\." {
            self.ended = true;
            return Ok(());
        }
        if self.header_pending {
            self.header_pending = false;
            return Ok(());
        }
        let text = std::str::from_utf8(line).map_err(|_| self.not_utf8())?;
        let delim = self.format.delimiter as char;
        let fields = text
            .split(delim)
            .map(|f| {
                if f == self.format.null {
                    None
                } else {
                    Some(unescape_text(f))
                }
            })
            .collect();
        self.row(fields, self.line)
    }

    fn csv_byte(&mut self, b: u8) -> Result<(), QueryError> {
        let (quote, escape, delimiter) =
            (self.format.quote, self.format.escape, self.format.delimiter);
        if self.in_quotes {
            if self.escape_next {
                self.escape_next = false;
                self.field.push(b);
            } else if b == quote {
                self.in_quotes = false;
                // With escape = quote, a second quote right after is a literal one.
                self.after_quote = escape == quote;
            } else if b == escape {
                self.escape_next = true;
            } else {
                if b == b'\n' {
                    self.line += 1;
                }
                self.field.push(b);
            }
            return Ok(());
        }
        if std::mem::take(&mut self.after_quote) && b == quote {
            self.field.push(quote);
            self.in_quotes = true;
            return Ok(());
        }
        if b == quote && self.field.is_empty() && !self.quoted {
            self.in_quotes = true;
            self.quoted = true;
        } else if b == delimiter {
            self.end_field()?;
        } else if b == b'\n' {
            self.line += 1;
            self.end_field()?;
            let fields = std::mem::take(&mut self.record);
            let at = self.record_line;
            self.record_line = self.line + 1;
            if fields.len() == 1 && fields[0].as_deref() == Some("\\.") {
                self.ended = true;
            } else if self.header_pending {
                self.header_pending = false;
            } else {
                self.row(fields, at)?;
            }
        } else {
            self.field.push(b);
        }
        Ok(())
    }

    fn end_field(&mut self) -> Result<(), QueryError> {
        let mut bytes = std::mem::take(&mut self.field);
        if !self.quoted && bytes.last() == Some(&b'\r') {
            bytes.pop();
        }
        let text = String::from_utf8(bytes).map_err(|_| self.not_utf8())?;
        let value = if !self.quoted && text == self.format.null {
            None
        } else {
            Some(text)
        };
        self.record.push(value);
        self.quoted = false;
        Ok(())
    }

    fn not_utf8(&self) -> QueryError {
        copy_error(
            "22021",
            format!(
                "invalid byte sequence for encoding \"UTF8\" (COPY {}, line {})",
                self.table, self.line
            ),
        )
    }

    fn row(&mut self, fields: Vec<Option<String>>, line: u64) -> Result<(), QueryError> {
        if fields.len() < self.targets.len() {
            let missing = &self.def.columns[self.targets[fields.len()]].name;
            return Err(copy_error(
                "22P04",
                format!(
                    "missing data for column \"{missing}\" (COPY {}, line {line})",
                    self.table
                ),
            ));
        }
        if fields.len() > self.targets.len() {
            return Err(copy_error(
                "22P04",
                format!(
                    "extra data after last expected column (COPY {}, line {line})",
                    self.table
                ),
            ));
        }
        self.chunk.push(fields);
        self.chunk_lines.push(line);
        if self.chunk.len() >= CHUNK_ROWS {
            self.flush_chunk()?;
        }
        Ok(())
    }

    fn flush_chunk(&mut self) -> Result<(), QueryError> {
        if self.chunk.is_empty() {
            return Ok(());
        }
        let rows = std::mem::take(&mut self.chunk);
        let lines = std::mem::take(&mut self.chunk_lines);
        let n = rows.len();
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(self.def.columns.len());
        for (ci, c) in self.def.columns.iter().enumerate() {
            let ty = arrow_type(c.ty);
            let Some(field) = self.targets.iter().position(|&t| t == ci) else {
                columns.push(datafusion::arrow::array::new_null_array(&ty, n));
                continue;
            };
            let values: Vec<Option<&str>> = rows.iter().map(|r| r[field].as_deref()).collect();
            let column = convert(c.ty, &values).map_err(|(row, value)| {
                copy_error(
                    "22P02",
                    format!(
                        "invalid input syntax for type {}: \"{value}\" (COPY {}, line {}, column {})",
                        c.ty.name(),
                        self.table,
                        lines[row],
                        c.name
                    ),
                )
            })?;
            columns.push(column);
        }
        let batch = RecordBatch::try_new(self.def.schema_nullable(), columns)
            .map_err(|e| QueryError::DataFusion(e.into()))?;
        let first = self.stage.rows();
        self.stage.add(&batch).map_err(|e| match e.find_root() {
            datafusion::error::DataFusionError::External(inner) => match inner.downcast_ref::<CatalogError>() {
                Some(CatalogError::NullKey { column, table, row }) => {
                    let idx = (row - first - 1) as usize;
                    copy_error(
                        "23502",
                        format!(
                            "null value in column \"{column}\" of relation \"{table}\" violates not-null constraint (COPY {table}, line {})",
                            lines.get(idx).copied().unwrap_or(0)
                        ),
                    )
                }
                _ => QueryError::DataFusion(e),
            },
            _ => QueryError::DataFusion(e),
        })?;
        Ok(())
    }

    /// CopyDone: the last line, the last chunk, then the whole load.
    pub fn finish(mut self) -> Result<u64, QueryError> {
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        if !self.ended {
            if self.format.csv {
                if !self.field.is_empty() || !self.record.is_empty() || self.quoted {
                    self.csv_byte(b'\n')?;
                }
            } else if !self.pending.is_empty() {
                let line = std::mem::take(&mut self.pending);
                self.text_line(&line)?;
            }
        }
        if self.format.csv && self.in_quotes {
            return Err(copy_error(
                "22P04",
                format!("unterminated CSV quoted field (COPY {})", self.table),
            ));
        }
        self.flush_chunk()?;
        self.stage.commit().map_err(QueryError::DataFusion)
    }
}

fn unescape_text(f: &str) -> String {
    if !f.contains('\\') {
        return f.to_string();
    }
    let mut out = String::with_capacity(f.len());
    let mut chars = f.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('t') => out.push('\t'),
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some('b') => out.push('\u{8}'),
            Some('f') => out.push('\u{c}'),
            Some('v') => out.push('\u{b}'),
            Some(other) => out.push(other),
            None => out.push('\\'),
        }
    }
    out
}

/// Text values to a column of `ty`; on failure, the row and value.
fn convert(ty: SqlType, values: &[Option<&str>]) -> Result<ArrayRef, (usize, String)> {
    if ty == SqlType::Bytea {
        let mut b = BinaryBuilder::new();
        for (i, v) in values.iter().enumerate() {
            match v {
                None => b.append_null(),
                Some(s) => match s.strip_prefix("\\x") {
                    Some(hex) => {
                        let bytes: Option<Vec<u8>> = (0..hex.len())
                            .step_by(2)
                            .map(|j| {
                                hex.get(j..j + 2)
                                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                            })
                            .collect();
                        b.append_value(bytes.ok_or_else(|| (i, s.to_string()))?);
                    }
                    None => b.append_value(s.as_bytes()),
                },
            }
        }
        return Ok(std::sync::Arc::new(b.finish()));
    }
    let strings: ArrayRef = Arc::new(StringArray::from(
        values
            .iter()
            .map(|v| {
                if ty == SqlType::Text {
                    *v
                } else {
                    v.map(str::trim)
                }
            })
            .collect::<Vec<_>>(),
    ));
    let target = arrow_type(ty);
    let strict = CastOptions {
        safe: false,
        ..Default::default()
    };
    match cast_with_options(&strings, &target, &strict) {
        Ok(a) => Ok(a),
        Err(_) => {
            // Find the first value that does not convert.
            let lenient = CastOptions::default();
            let a =
                cast_with_options(&strings, &target, &lenient).map_err(|_| (0, String::new()))?;
            let bad = (0..a.len())
                .find(|&i| a.is_null(i) && !strings.is_null(i))
                .unwrap_or(0);
            Err((bad, values[bad].unwrap_or_default().to_string()))
        }
    }
}

/// A value as COPY TO writes it (PostgreSQL's text output).
fn out_text(field: &FieldRef, array: &ArrayRef) -> Result<Vec<Option<String>>, QueryError> {
    let n = array.len();
    let mut out = Vec::with_capacity(n);
    match array.data_type() {
        DataType::Boolean => {
            let a = array.as_boolean();
            for i in 0..n {
                out.push((!a.is_null(i)).then(|| if a.value(i) { "t" } else { "f" }.to_string()));
            }
        }
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => {
            let a = datafusion::arrow::compute::cast(array, &DataType::Binary)
                .map_err(|e| QueryError::DataFusion(e.into()))?;
            let a = a.as_binary::<i32>();
            for i in 0..n {
                out.push((!a.is_null(i)).then(|| {
                    let mut s = String::from("\\x");
                    for b in a.value(i) {
                        s.push_str(&format!("{b:02x}"));
                    }
                    s
                }));
            }
        }
        _ => {
            let fields = [pgwire::api::results::FieldInfo::new(
                "v".into(),
                None,
                None,
                pgwire::api::Type::TEXT,
                pgwire::api::results::FieldFormat::Text,
            )];
            let batch = RecordBatch::try_new(
                Arc::new(Schema::new(vec![field.clone()])),
                vec![array.clone()],
            )
            .map_err(|e| QueryError::DataFusion(e.into()))?;
            let batch = crate::text::postgres_columns(batch, &fields)
                .map_err(|e| QueryError::DataFusion(e.into()))?;
            let formatter = datafusion::arrow::util::display::ArrayFormatter::try_new(
                batch.column(0),
                &ArrowFormat::default(),
            )
            .map_err(|e| QueryError::DataFusion(e.into()))?;
            for i in 0..n {
                out.push((!batch.column(0).is_null(i)).then(|| formatter.value(i).to_string()));
            }
        }
    }
    Ok(out)
}

fn escape_text(s: &str, delimiter: u8) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c as u32 == u32::from(delimiter) => {
                out.push('\\');
                out.push(c);
            }
            c => out.push(c),
        }
    }
    out
}

fn escape_csv(s: &str, f: &CopyFormat) -> String {
    let q = f.quote as char;
    let needs = s.is_empty() && f.null.is_empty()
        || s == f.null
        || s.chars()
            .any(|c| c == q || c == f.delimiter as char || c == '\n' || c == '\r');
    if !needs {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len() + 2);
    out.push(q);
    for c in s.chars() {
        if c == q || c as u32 == u32::from(f.escape) {
            out.push(f.escape as char);
        }
        out.push(c);
    }
    out.push(q);
    out
}

/// The lines of one batch.
pub fn batch_lines(batch: &RecordBatch, f: &CopyFormat) -> Result<Vec<Vec<u8>>, QueryError> {
    let schema = batch.schema();
    let columns: Vec<Vec<Option<String>>> = schema
        .fields()
        .iter()
        .zip(batch.columns())
        .map(|(field, array)| out_text(field, array))
        .collect::<Result<_, _>>()?;
    let mut lines = Vec::with_capacity(batch.num_rows());
    for row in 0..batch.num_rows() {
        let mut line = String::new();
        for (i, c) in columns.iter().enumerate() {
            if i > 0 {
                line.push(f.delimiter as char);
            }
            match &c[row] {
                None => line.push_str(&f.null),
                Some(v) if f.csv => line.push_str(&escape_csv(v, f)),
                Some(v) => line.push_str(&escape_text(v, f.delimiter)),
            }
        }
        line.push('\n');
        lines.push(line.into_bytes());
    }
    Ok(lines)
}

/// The header line of a CSV COPY TO.
pub fn header_line(names: &[String], f: &CopyFormat) -> Vec<u8> {
    let mut line = names
        .iter()
        .map(|n| {
            if f.csv {
                escape_csv(n, f)
            } else {
                escape_text(n, f.delimiter)
            }
        })
        .collect::<Vec<_>>()
        .join(&(f.delimiter as char).to_string());
    line.push('\n');
    line.into_bytes()
}

/// Runs the query of a COPY TO and returns its column count and the
/// CopyData stream, one message per row.
pub async fn copy_out(
    session: &Session,
    query: &str,
    format: &CopyFormat,
) -> Result<
    (
        usize,
        futures::stream::BoxStream<'static, pgwire::error::PgWireResult<CopyData>>,
    ),
    QueryError,
> {
    // The query was parsed with the COPY around it; it goes through the
    // same rewrites and naming as any other query.
    let mut statements = datafusion::sql::sqlparser::parser::Parser::parse_sql(
        &datafusion::sql::sqlparser::dialect::PostgreSqlDialect {},
        query,
    )?;
    if statements.len() != 1 {
        return Err(QueryError::NotSupported {
            what: "COPY of more than one query".into(),
        });
    }
    let (plan, names) = crate::query::plan_statement(session, statements.remove(0)).await?;
    let df = session.ctx.execute_logical_plan(plan).await?;
    let names: Vec<String> = names
        .apply(df.schema().as_arrow())
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    let n = names.len();
    let stream = df.execute_stream().await?;
    let format = format.clone();
    let header = format.header.then(|| {
        Ok(CopyData::new(bytes::Bytes::from(header_line(
            &names, &format,
        ))))
    });
    let rows = stream.flat_map(move |batch| {
        let lines: Vec<pgwire::error::PgWireResult<CopyData>> = match batch
            .map_err(QueryError::DataFusion)
            .and_then(|b| batch_lines(&b, &format))
        {
            Ok(lines) => lines
                .into_iter()
                .map(|l| Ok(CopyData::new(bytes::Bytes::from(l))))
                .collect(),
            Err(e) => vec![Err(e.into())],
        };
        futures::stream::iter(lines)
    });
    Ok((n, futures::stream::iter(header).chain(rows).boxed()))
}
