//! DDL and maintenance commands for region tables, which DataFusion does
//! not plan: CREATE TABLE with families and options, ALTER TABLE, TRUNCATE,
//! and the `ALTER TABLE t SPLIT AT / FLUSH / COMPACT` commands.

use std::sync::Arc;

use datafusion::arrow::datatypes::DataType;
use datafusion::sql::sqlparser::ast::{AlterTableOperation, ObjectName, Statement};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer, Word};
use pgwire::api::results::Tag;
use tidebase_catalog::storage::log::TopicConfig;
use tidebase_catalog::table::codec::encode_key_value;
use tidebase_catalog::table::ddl::{
    apply_options, set_option, set_options, split_family, table_def,
};
use tidebase_catalog::table::{ColumnDef, SqlType, TableDef, DEFAULT_FAMILY};
use tidebase_catalog::topic::TopicDef;
use tidebase_catalog::CatalogError;

use crate::session::Session;
use crate::sqlstate::QueryError;

/// A command this module runs.
#[derive(Debug, Clone)]
pub enum DdlCommand {
    CreateTable {
        def: TableDef,
        if_not_exists: bool,
    },
    CreateTableAs {
        name: String,
        if_not_exists: bool,
        query: String,
    },
    AddColumn {
        table: String,
        column: ColumnDef,
        if_not_exists: bool,
    },
    SetOptions {
        table: String,
        options: Vec<(String, String)>,
    },
    AddFamily {
        table: String,
        family: String,
        options: Vec<(String, String)>,
    },
    Truncate(Vec<String>),
    SplitAt {
        table: String,
        values: String,
    },
    Flush(String),
    Compact(String),
    CreateTopic {
        def: TopicDef,
        config: TopicConfig,
        if_not_exists: bool,
    },
    DropTopic {
        names: Vec<String>,
        if_exists: bool,
    },
    AlterTopic {
        name: String,
        options: Vec<(String, String)>,
    },
}

fn ident_word(w: &Word) -> String {
    if w.quote_style.is_some() {
        w.value.clone()
    } else {
        w.value.to_lowercase()
    }
}

/// Rewrites the parts of Tidebase's SQL that the PostgreSQL grammar lacks
/// into forms it parses:
///
/// - in `CREATE TABLE (...)` and `ALTER TABLE ... ADD [COLUMN]`,
///   `family.column` (and `family.OPTION` in `WITH (...)` and in
///   `ALTER TABLE ... SET (...)`) becomes the quoted identifier
///   `"family.column"`;
/// - `FROM t AS OF TIMESTAMP '...'` becomes `FROM as_of('t', '...') AS t`.
pub fn preprocess(sql: &str) -> String {
    let Ok(tokens) = Tokenizer::new(&PostgreSqlDialect {}, sql).tokenize() else {
        return sql.to_string();
    };
    let significant = |t: &Token| !matches!(t, Token::Whitespace(_));
    let sig: Vec<usize> = (0..tokens.len())
        .filter(|&i| significant(&tokens[i]))
        .collect();
    let kw = |i: usize, k: &str| match sig.get(i).map(|&j| &tokens[j]) {
        Some(Token::Word(w)) => w.quote_style.is_none() && w.value.eq_ignore_ascii_case(k),
        _ => false,
    };
    let is_create = kw(0, "CREATE") && (kw(1, "TABLE") || kw(3, "TABLE"));
    let is_alter_add = kw(0, "ALTER") && kw(1, "TABLE");
    let mut out: Vec<Token> = Vec::with_capacity(tokens.len());
    let mut depth = 0i32;
    let mut prev_sig: Option<Token> = None;
    let mut i = 0;
    let mut changed = false;
    // Index into `sig` of the token at `i`.
    let sig_pos = |i: usize| sig.binary_search(&i).ok();
    let mut stop_merging = false;
    while i < tokens.len() {
        let t = &tokens[i];
        if let Some(p) = sig_pos(i) {
            // family.column
            let at_column_position = is_create
                && depth == 1
                && !stop_merging
                && matches!(prev_sig, Some(Token::LParen) | Some(Token::Comma))
                || is_alter_add
                    && matches!(&prev_sig, Some(Token::Word(w)) if w.quote_style.is_none()
                        && (w.value.eq_ignore_ascii_case("ADD") || w.value.eq_ignore_ascii_case("COLUMN")))
                // ALTER TABLE t SET (family.OPTION = ...)
                || is_alter_add
                    && depth == 1
                    && matches!(prev_sig, Some(Token::LParen) | Some(Token::Comma));
            if at_column_position {
                if let (Some(Token::Word(a)), Some(Token::Period), Some(Token::Word(b))) = (
                    sig.get(p).map(|&j| &tokens[j]),
                    sig.get(p + 1).map(|&j| &tokens[j]),
                    sig.get(p + 2).map(|&j| &tokens[j]),
                ) {
                    if sig[p + 1] == i + 1 && sig[p + 2] == i + 2 {
                        let merged = Token::Word(Word {
                            value: format!("{}.{}", ident_word(a), ident_word(b)),
                            quote_style: Some('"'),
                            keyword: datafusion::sql::sqlparser::keywords::Keyword::NoKeyword,
                        });
                        out.push(merged.clone());
                        prev_sig = Some(merged);
                        i += 3;
                        changed = true;
                        continue;
                    }
                }
            }
            // t AS OF TIMESTAMP 'lit'
            if kw(p + 1, "AS") && kw(p + 2, "OF") && kw(p + 3, "TIMESTAMP") {
                if let (Token::Word(name), Some(Token::SingleQuotedString(ts))) =
                    (t, sig.get(p + 4).map(|&j| &tokens[j]))
                {
                    let table = ident_word(name);
                    let text = format!(
                        "as_of('{}', '{}') AS \"{}\"",
                        table.replace('\'', "''"),
                        ts.replace('\'', "''"),
                        table.replace('"', "\"\"")
                    );
                    out.push(Token::make_word(&text, None));
                    prev_sig = None;
                    i = sig[p + 4] + 1;
                    changed = true;
                    continue;
                }
            }
            match t {
                Token::LParen => depth += 1,
                Token::RParen => depth -= 1,
                Token::Word(w)
                    if depth == 0
                        && w.quote_style.is_none()
                        && w.value.eq_ignore_ascii_case("AS") =>
                {
                    // CREATE TABLE ... AS SELECT: leave the query alone.
                    stop_merging = true;
                }
                _ => {}
            }
            prev_sig = Some(t.clone());
        }
        out.push(t.clone());
        i += 1;
    }
    if !changed {
        return sql.to_string();
    }
    out.iter().map(|t| t.to_string()).collect()
}

fn table_name(name: &ObjectName) -> Result<String, QueryError> {
    name.0
        .last()
        .and_then(|p| p.as_ident())
        .map(|i| i.value.clone())
        .ok_or_else(|| QueryError::NotSupported {
            what: format!("the table name {name}"),
        })
}

/// Text commands the grammar has no rule for:
/// `ALTER TABLE t SPLIT AT (v, ...)`, `ALTER TABLE t FLUSH`,
/// `ALTER TABLE t COMPACT`, `ALTER TABLE t ADD FAMILY f`.
pub fn recognize(sql: &str) -> Option<Result<DdlCommand, QueryError>> {
    let tokens = Tokenizer::new(&PostgreSqlDialect {}, sql).tokenize().ok()?;
    let sig: Vec<&Token> = tokens
        .iter()
        .filter(|t| !matches!(t, Token::Whitespace(_) | Token::SemiColon))
        .collect();
    let kw = |i: usize, k: &str| matches!(sig.get(i), Some(Token::Word(w)) if w.quote_style.is_none() && w.value.eq_ignore_ascii_case(k));
    if kw(1, "TOPIC") && (kw(0, "CREATE") || kw(0, "DROP") || kw(0, "ALTER")) {
        return Some(topic_command(sql, &tokens, &sig));
    }
    if !(kw(0, "ALTER") && kw(1, "TABLE")) {
        return None;
    }
    let Some(Token::Word(name)) = sig.get(2) else {
        return None;
    };
    let table = ident_word(name);
    if kw(3, "FLUSH") && sig.len() == 4 {
        return Some(Ok(DdlCommand::Flush(table)));
    }
    if kw(3, "COMPACT") && sig.len() == 4 {
        return Some(Ok(DdlCommand::Compact(table)));
    }
    if kw(3, "ADD") && kw(4, "FAMILY") {
        // ALTER TABLE t ADD FAMILY f [WITH (option = value, ...)]
        let usage =
            || syntax("expected ALTER TABLE name ADD FAMILY family [WITH (option = value, ...)]");
        let Some(Token::Word(family)) = sig.get(5) else {
            return Some(Err(usage()));
        };
        let options = match &sig[6..] {
            [] => Ok(Vec::new()),
            [Token::Word(w), Token::LParen, inner @ .., Token::RParen]
                if w.value.eq_ignore_ascii_case("WITH") =>
            {
                option_list(inner)
            }
            _ => Err(usage()),
        };
        return Some(options.map(|options| DdlCommand::AddFamily {
            table,
            family: ident_word(family),
            options,
        }));
    }
    if kw(3, "SPLIT") && kw(4, "AT") {
        // Everything after AT, as written: `(1)` or `(1, 'a')`.
        let text: String = {
            let mut seen = 0;
            let mut out = String::new();
            for t in &tokens {
                if !matches!(t, Token::Whitespace(_)) {
                    seen += 1;
                }
                if seen > 5 && !matches!(t, Token::SemiColon) {
                    out.push_str(&t.to_string());
                }
            }
            out
        };
        return Some(Ok(DdlCommand::SplitAt {
            table,
            values: text.trim().to_string(),
        }));
    }
    None
}

fn syntax(message: impl Into<String>) -> QueryError {
    QueryError::Syntax {
        message: message.into(),
    }
}

/// `CREATE TOPIC` (parsed as the CREATE TABLE it resembles), `DROP TOPIC
/// [IF EXISTS] a, b`, `ALTER TOPIC t SET (option = value, ...)`.
fn topic_command(sql: &str, tokens: &[Token], sig: &[&Token]) -> Result<DdlCommand, QueryError> {
    let word = |i: usize| match sig.get(i) {
        Some(Token::Word(w)) => Some(w),
        _ => None,
    };
    let verb = word(0)
        .map(|w| w.value.to_ascii_uppercase())
        .unwrap_or_default();
    match verb.as_str() {
        "CREATE" => {
            // Swap the TOPIC keyword for TABLE and let the grammar do the rest.
            let mut seen = 0;
            let mut text = String::with_capacity(sql.len());
            for t in tokens {
                if !matches!(t, Token::Whitespace(_)) {
                    seen += 1;
                }
                if seen == 2 && matches!(t, Token::Word(_)) {
                    text.push_str("TABLE");
                    seen += 1;
                } else {
                    text.push_str(&t.to_string());
                }
            }
            let stmts =
                datafusion::sql::sqlparser::parser::Parser::parse_sql(&PostgreSqlDialect {}, &text)
                    .map_err(|e| syntax(e.to_string().replace("TABLE", "TOPIC")))?;
            let [Statement::CreateTable(ct)] = stmts.as_slice() else {
                return Err(syntax(
                    "expected CREATE TOPIC name [(columns)] [WITH (options)]",
                ));
            };
            if ct.query.is_some() || !ct.constraints.is_empty() {
                return Err(QueryError::NotSupported {
                    what: "CREATE TOPIC with AS SELECT or constraints".into(),
                });
            }
            let (def, config) = tidebase_catalog::topic::ddl::topic_def(ct)?;
            Ok(DdlCommand::CreateTopic {
                def,
                config,
                if_not_exists: ct.if_not_exists,
            })
        }
        "DROP" => {
            let mut i = 2;
            let if_exists = word(2).is_some_and(|w| w.value.eq_ignore_ascii_case("IF"))
                && word(3).is_some_and(|w| w.value.eq_ignore_ascii_case("EXISTS"));
            if if_exists {
                i = 4;
            }
            let mut names = Vec::new();
            while let Some(w) = word(i) {
                names.push(ident_word(w));
                match sig.get(i + 1) {
                    None => break,
                    Some(Token::Comma) => i += 2,
                    Some(t) => return Err(syntax(format!("syntax error at or near \"{t}\""))),
                }
            }
            if names.is_empty() || sig.len() != i + 1 {
                return Err(syntax("expected DROP TOPIC [IF EXISTS] name [, ...]"));
            }
            Ok(DdlCommand::DropTopic { names, if_exists })
        }
        _ => {
            let name = word(2)
                .map(ident_word)
                .ok_or_else(|| syntax("expected a topic name"))?;
            if !(word(3).is_some_and(|w| w.value.eq_ignore_ascii_case("SET"))
                && matches!(sig.get(4), Some(Token::LParen))
                && matches!(sig.last(), Some(Token::RParen)))
            {
                return Err(syntax(
                    "expected ALTER TOPIC name SET (option = value, ...)",
                ));
            }
            let options = option_list(&sig[5..sig.len() - 1])?;
            Ok(DdlCommand::AlterTopic { name, options })
        }
    }
}

/// `key = value, ...` (the inside of `WITH (...)` or `SET (...)`).
fn option_list(tokens: &[&Token]) -> Result<Vec<(String, String)>, QueryError> {
    let mut options = Vec::new();
    for part in tokens.split(|t| matches!(t, Token::Comma)) {
        let [Token::Word(k), Token::Eq, v] = part else {
            return Err(syntax("expected option = value"));
        };
        let value = match v {
            Token::Number(n, _) => n.clone(),
            Token::SingleQuotedString(s) => s.clone(),
            Token::Word(w) => w.value.clone(),
            other => return Err(syntax(format!("bad option value {other}"))),
        };
        options.push((k.value.clone(), value));
    }
    Ok(options)
}

/// The command for a parsed statement, if it is one this module runs.
pub fn from_statement(stmt: &Statement) -> Option<Result<DdlCommand, QueryError>> {
    Some(match stmt {
        Statement::CreateTable(ct) if !ct.external => {
            if let Some(q) = &ct.query {
                table_name(&ct.name).map(|name| DdlCommand::CreateTableAs {
                    name,
                    if_not_exists: ct.if_not_exists,
                    query: q.to_string(),
                })
            } else {
                table_def(ct)
                    .map(|def| DdlCommand::CreateTable {
                        def,
                        if_not_exists: ct.if_not_exists,
                    })
                    .map_err(QueryError::from)
            }
        }
        Statement::AlterTable(at) => {
            let table = match table_name(&at.name) {
                Ok(t) => t,
                Err(e) => return Some(Err(e)),
            };
            match at.operations.as_slice() {
                [AlterTableOperation::AddColumn {
                    column_def,
                    if_not_exists,
                    ..
                }] => {
                    let (family, name) = split_family(&column_def.name.value);
                    SqlType::parse(&column_def.data_type.to_string())
                        .ok_or_else(|| {
                            CatalogError::UnsupportedType(column_def.data_type.to_string()).into()
                        })
                        .map(|ty| DdlCommand::AddColumn {
                            table,
                            column: ColumnDef { name, family, ty },
                            if_not_exists: *if_not_exists,
                        })
                }
                [AlterTableOperation::SetOptionsParens { options }] => {
                    let mut def = TableDef {
                        name: table.clone(),
                        columns: vec![],
                        key: vec![],
                        families: vec![],
                        split_size: None,
                    };
                    // Validate syntax now; values are applied at execution.
                    match apply_options(&mut def, options) {
                        Ok(()) | Err(CatalogError::FamilyNotFound(_)) => {}
                        Err(e) => return Some(Err(e.into())),
                    }
                    let mut pairs = Vec::new();
                    for o in options {
                        if let datafusion::sql::sqlparser::ast::SqlOption::KeyValue { key, value } =
                            o
                        {
                            let v = match value {
                                datafusion::sql::sqlparser::ast::Expr::Value(v) => match &v.value {
                                    datafusion::sql::sqlparser::ast::Value::SingleQuotedString(
                                        s,
                                    ) => s.clone(),
                                    other => other.to_string(),
                                },
                                other => other.to_string(),
                            };
                            pairs.push((key.value.clone(), v));
                        }
                    }
                    Ok(DdlCommand::SetOptions {
                        table,
                        options: pairs,
                    })
                }
                _ => Err(QueryError::NotSupported {
                    what: format!("this ALTER TABLE form ({stmt})"),
                }),
            }
        }
        Statement::Truncate(t) => t
            .table_names
            .iter()
            .map(|n| table_name(&n.name))
            .collect::<Result<Vec<_>, _>>()
            .map(DdlCommand::Truncate),
        _ => return None,
    })
}

fn sql_type_of(dt: &DataType) -> Option<SqlType> {
    Some(match dt {
        DataType::Boolean => SqlType::Bool,
        DataType::Int8 | DataType::Int16 | DataType::UInt8 => SqlType::Int2,
        DataType::Int32 | DataType::UInt16 => SqlType::Int4,
        DataType::Int64 | DataType::UInt32 | DataType::UInt64 => SqlType::Int8,
        DataType::Float16 | DataType::Float32 => SqlType::Float4,
        DataType::Float64 | DataType::Decimal128(..) | DataType::Decimal256(..) => SqlType::Float8,
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => SqlType::Text,
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => SqlType::Bytea,
        DataType::Date32 | DataType::Date64 => SqlType::Date,
        DataType::Timestamp(..) => SqlType::Timestamp,
        _ => return None,
    })
}

fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Runs a command for a session.
pub async fn execute(session: &Arc<Session>, cmd: &DdlCommand) -> Result<Tag, QueryError> {
    let catalog = session.catalog.clone();
    let schema = catalog.user_schema().clone();
    let blocking = |f: Box<dyn FnOnce() -> Result<(), CatalogError> + Send>| async move {
        tokio::task::spawn_blocking(f)
            .await
            .map_err(|e| QueryError::NotSupported {
                what: format!("a task that panicked ({e})"),
            })?
            .map_err(QueryError::from)
    };
    let existing = |name: &str| -> Result<TableDef, QueryError> {
        schema
            .get(name)
            .map(|t| t.def.clone())
            .ok_or_else(|| CatalogError::TableNotFound(name.to_string()).into())
    };
    match cmd.clone() {
        DdlCommand::CreateTopic {
            def,
            config,
            if_not_exists,
        } => {
            let s = schema.clone();
            blocking(Box::new(move || {
                s.create_topic(def, config, if_not_exists).map(|_| ())
            }))
            .await?;
            Ok(Tag::new("CREATE TOPIC"))
        }
        DdlCommand::DropTopic { names, if_exists } => {
            let topics = catalog.topics().clone();
            for name in &names {
                if topics.get(name).is_none() && !if_exists {
                    return Err(CatalogError::TableNotFound(name.clone()).into());
                }
            }
            blocking(Box::new(move || {
                for name in names {
                    topics.drop_topic(&name)?;
                }
                Ok(())
            }))
            .await?;
            Ok(Tag::new("DROP TOPIC"))
        }
        DdlCommand::AlterTopic { name, options } => {
            let topics = catalog.topics().clone();
            let table = topics
                .get(&name)
                .filter(|_| !name.starts_with(tidebase_catalog::topic::INTERNAL_PREFIX))
                .ok_or_else(|| CatalogError::TableNotFound(name.clone()))?;
            let mut def = table.def.clone();
            let log_topic = topics
                .log()
                .topic(&name)
                .ok_or_else(|| CatalogError::TableNotFound(name.clone()))?;
            let mut config = log_topic.config();
            for (k, v) in &options {
                tidebase_catalog::topic::ddl::set_option(&mut def, &mut config, k, v, false)?;
            }
            if config.partitions < log_topic.partition_count() {
                return Err(CatalogError::BadOptionValue {
                    name: "PARTITIONS".into(),
                    value: format!(
                        "{} (partitions only grow, from {})",
                        config.partitions,
                        log_topic.partition_count()
                    ),
                }
                .into());
            }
            blocking(Box::new(move || {
                topics
                    .alter(
                        &name,
                        Some(config.partitions),
                        Some(config.retention_ms),
                        Some(config.retention_bytes),
                    )
                    .map(|_| ())
            }))
            .await?;
            Ok(Tag::new("ALTER TOPIC"))
        }
        DdlCommand::CreateTable { def, if_not_exists } => {
            let s = schema.clone();
            blocking(Box::new(move || s.create(def, if_not_exists).map(|_| ()))).await?;
            Ok(Tag::new("CREATE TABLE"))
        }
        DdlCommand::CreateTableAs {
            name,
            if_not_exists,
            query,
        } => {
            if schema.get(&name).is_some() {
                if if_not_exists {
                    return Ok(Tag::new("CREATE TABLE AS"));
                }
                return Err(CatalogError::TableExists(name).into());
            }
            let df = session.ctx.sql(&query).await?;
            let mut columns = Vec::new();
            for f in df.schema().fields() {
                let ty = sql_type_of(f.data_type())
                    .ok_or_else(|| CatalogError::UnsupportedType(f.data_type().to_string()))?;
                columns.push(ColumnDef {
                    name: f.name().clone(),
                    family: DEFAULT_FAMILY.to_string(),
                    ty,
                });
            }
            let def = TableDef {
                name: name.clone(),
                columns,
                key: vec![],
                families: vec![(DEFAULT_FAMILY.to_string(), Default::default())],
                split_size: None,
            };
            let s = schema.clone();
            blocking(Box::new(move || s.create(def, false).map(|_| ()))).await?;
            let insert = format!("INSERT INTO {} {query}", quote(&name));
            let result = async {
                let batches = session.ctx.sql(&insert).await?.collect().await?;
                Ok::<_, QueryError>(crate::query::affected_rows(batches))
            }
            .await;
            match result {
                Ok(n) => Ok(Tag::new("SELECT").with_rows(n)),
                Err(e) => {
                    // Nothing half-made: the table goes away with its rows.
                    let s = schema.clone();
                    let _ = blocking(Box::new(move || s.drop_table(&name).map(|_| ()))).await;
                    Err(e)
                }
            }
        }
        DdlCommand::AddColumn {
            table,
            column,
            if_not_exists,
        } => {
            let mut def = existing(&table)?;
            if def.column(&column.name).is_some() {
                if if_not_exists {
                    return Ok(Tag::new("ALTER TABLE"));
                }
                return Err(CatalogError::DuplicateColumn(column.name).into());
            }
            if def.family_options(&column.family).is_none() {
                return Err(CatalogError::FamilyNotFound(column.family).into());
            }
            def.columns.push(column);
            let s = schema.clone();
            blocking(Box::new(move || s.redefine(def))).await?;
            Ok(Tag::new("ALTER TABLE"))
        }
        DdlCommand::SetOptions { table, options } => {
            let mut def = existing(&table)?;
            let families = def.families.clone();
            set_options(&mut def, options)?;
            let s = schema.clone();
            if def.families == families {
                blocking(Box::new(move || s.redefine(def))).await?;
            } else {
                blocking(Box::new(move || s.alter_families(def))).await?;
            }
            Ok(Tag::new("ALTER TABLE"))
        }
        DdlCommand::AddFamily {
            table,
            family,
            options,
        } => {
            let mut def = existing(&table)?;
            if def.family_options(&family).is_some() {
                return Err(CatalogError::FamilyExists { table, family }.into());
            }
            def.families.push((
                family.clone(),
                tidebase_catalog::storage::FamilyOptions::default(),
            ));
            for (k, v) in &options {
                set_option(&mut def, &format!("{family}.{k}"), v)?;
            }
            let s = schema.clone();
            blocking(Box::new(move || s.alter_families(def))).await?;
            Ok(Tag::new("ALTER TABLE"))
        }
        DdlCommand::Truncate(names) => {
            for n in &names {
                existing(n)?;
            }
            for n in names {
                let s = schema.clone();
                blocking(Box::new(move || s.truncate(&n))).await?;
            }
            Ok(Tag::new("TRUNCATE TABLE"))
        }
        DdlCommand::Flush(table) => {
            existing(&table)?;
            let e = schema.engine().clone();
            blocking(Box::new(move || {
                e.flush(&table).map_err(CatalogError::from)
            }))
            .await?;
            Ok(Tag::new("ALTER TABLE"))
        }
        DdlCommand::Compact(table) => {
            existing(&table)?;
            let e = schema.engine().clone();
            blocking(Box::new(move || {
                e.flush(&table)?;
                e.compact(&table, true).map_err(CatalogError::from)
            }))
            .await?;
            Ok(Tag::new("ALTER TABLE"))
        }
        DdlCommand::SplitAt { table, values } => {
            let def = existing(&table)?;
            if def.key.is_empty() {
                return Err(QueryError::NotSupported {
                    what: "SPLIT AT on a table without a primary key".into(),
                });
            }
            let inner = values
                .trim()
                .strip_prefix('(')
                .and_then(|v| v.strip_suffix(')'))
                .unwrap_or(&values);
            let batches = session
                .ctx
                .sql(&format!("SELECT {inner}"))
                .await?
                .collect()
                .await?;
            let batch = batches.first().ok_or_else(|| QueryError::NotSupported {
                what: "an empty SPLIT AT key".into(),
            })?;
            if batch.num_columns() > def.key.len() {
                return Err(CatalogError::BadOptionValue {
                    name: "SPLIT AT".into(),
                    value: values.clone(),
                }
                .into());
            }
            let mut key = Vec::new();
            for (i, col) in batch.columns().iter().enumerate() {
                let c = &def.columns[def.key[i]];
                let ty = tidebase_catalog::table::codec::arrow_type(c.ty);
                let v = datafusion::arrow::compute::cast(col, &ty)
                    .map_err(|e| QueryError::DataFusion(e.into()))?;
                if !encode_key_value(&mut key, c.ty, &v, 0) {
                    return Err(CatalogError::NullKey {
                        column: c.name.clone(),
                        table: table.clone(),
                        row: 1,
                    }
                    .into());
                }
            }
            let e = schema.engine().clone();
            blocking(Box::new(move || {
                e.split_at(&table, &key).map_err(CatalogError::from)
            }))
            .await?;
            Ok(Tag::new("ALTER TABLE"))
        }
    }
}

/// `INSERT INTO t ... ON CONFLICT [(key)] DO NOTHING` on a region table
/// becomes an INSERT of the rows whose key is not there yet:
/// `INSERT INTO t (cols) SELECT * FROM (source) AS src(cols) WHERE NOT
/// EXISTS (SELECT 1 FROM t AS cur WHERE cur.k = src.k ...)`. `None` when
/// the statement is not such an INSERT.
pub fn on_conflict_do_nothing(
    stmt: &Statement,
    session: &Session,
) -> Option<Result<String, QueryError>> {
    use datafusion::sql::sqlparser::ast::{OnConflictAction, OnInsert, TableObject};
    let Statement::Insert(insert) = stmt else {
        return None;
    };
    let Some(OnInsert::OnConflict(conflict)) = &insert.on else {
        return None;
    };
    Some((|| {
        if !matches!(conflict.action, OnConflictAction::DoNothing) {
            return Err(QueryError::NotSupported {
                what:
                    "ON CONFLICT ... DO UPDATE (an INSERT already updates: it writes new versions)"
                        .into(),
            });
        }
        if insert.returning.is_some() {
            return Err(QueryError::NotSupported {
                what: "RETURNING".into(),
            });
        }
        let TableObject::TableName(name) = &insert.table else {
            return Err(QueryError::NotSupported {
                what: "ON CONFLICT on a table function".into(),
            });
        };
        let table = table_name(name)?;
        let def = session
            .catalog
            .user_schema()
            .get(&table)
            .map(|t| t.def.clone())
            .ok_or_else(|| QueryError::from(CatalogError::TableNotFound(table.clone())))?;
        if def.key.is_empty() {
            return Err(QueryError::NotSupported {
                what: "ON CONFLICT on a table without a primary key".into(),
            });
        }
        let columns: Vec<String> = if insert.columns.is_empty() {
            def.columns.iter().map(|c| c.name.clone()).collect()
        } else {
            insert
                .columns
                .iter()
                .map(|c| c.to_string().trim_matches('"').to_string())
                .collect()
        };
        let key_names: Vec<&str> = def
            .key
            .iter()
            .map(|&k| def.columns[k].name.as_str())
            .collect();
        if let Some(missing) = key_names.iter().find(|k| !columns.iter().any(|c| c == *k)) {
            return Err(CatalogError::NullKey {
                column: missing.to_string(),
                table: table.clone(),
                row: 1,
            }
            .into());
        }
        let source = insert
            .source
            .as_ref()
            .ok_or_else(|| QueryError::NotSupported {
                what: "INSERT ... DEFAULT VALUES".into(),
            })?;
        let cols = columns
            .iter()
            .map(|c| quote(c))
            .collect::<Vec<_>>()
            .join(", ");
        let cond = key_names
            .iter()
            .map(|k| format!("cur.{0} = src.{0}", quote(k)))
            .collect::<Vec<_>>()
            .join(" AND ");
        Ok(format!(
            "INSERT INTO {t} ({cols}) SELECT * FROM ({source}) AS src({cols}) \
             WHERE NOT EXISTS (SELECT 1 FROM {t} AS cur WHERE {cond})",
            t = quote(&table),
        ))
    })())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn family_columns_are_quoted_in_ddl_only() {
        assert_eq!(
            preprocess("CREATE TABLE emp (id INT PRIMARY KEY, personal.name TEXT) WITH (personal.VERSIONS = 5)"),
            "CREATE TABLE emp (id INT PRIMARY KEY, \"personal.name\" TEXT) WITH (\"personal.versions\" = 5)"
        );
        assert_eq!(
            preprocess("ALTER TABLE emp ADD COLUMN personal.city TEXT"),
            "ALTER TABLE emp ADD COLUMN \"personal.city\" TEXT"
        );
        let q = "SELECT e.name FROM emp e WHERE (e.id = 1)";
        assert_eq!(preprocess(q), q);
        let ctas = "CREATE TABLE t AS SELECT * FROM emp e WHERE (e.id = 1)";
        assert_eq!(preprocess(ctas), ctas);
    }

    #[test]
    fn as_of_becomes_a_table_function() {
        assert_eq!(
            preprocess("SELECT * FROM emp AS OF TIMESTAMP '2026-01-01 00:00:00' WHERE id = 1"),
            "SELECT * FROM as_of('emp', '2026-01-01 00:00:00') AS \"emp\" WHERE id = 1"
        );
    }

    #[test]
    fn maintenance_commands() {
        assert!(
            matches!(recognize("ALTER TABLE t FLUSH"), Some(Ok(DdlCommand::Flush(t))) if t == "t")
        );
        assert!(
            matches!(recognize("alter table T compact;"), Some(Ok(DdlCommand::Compact(t))) if t == "t")
        );
        match recognize("ALTER TABLE t SPLIT AT (100, 'x')") {
            Some(Ok(DdlCommand::SplitAt { table, values })) => {
                assert_eq!(table, "t");
                assert_eq!(values, "(100, 'x')");
            }
            other => panic!("{other:?}"),
        }
        assert!(recognize("ALTER TABLE t ADD COLUMN x INT").is_none());
    }
}
