//! SQL rewrites applied after parsing, for client queries DataFusion cannot
//! plan as PostgreSQL writes them.

use std::ops::ControlFlow;

use datafusion::arrow::datatypes::{Field, Schema};
use datafusion::sql::sqlparser::ast::{
    DataType, Expr, Function, FunctionArg, FunctionArgExpr, FunctionArgumentList,
    FunctionArguments, GroupByExpr, Ident, ObjectName, ObjectNamePart, SelectItem, SetExpr,
    Statement, VisitMut, VisitorMut,
};

/// Aggregates whose presence means a scalar subquery already returns one row.
const AGGREGATES: &[&str] = &[
    "count",
    "sum",
    "min",
    "max",
    "avg",
    "array_agg",
    "string_agg",
    "bool_and",
    "bool_or",
    "every",
    "first_value",
    "last_value",
    "json_agg",
    "jsonb_agg",
    "stddev",
    "variance",
];

/// PostgreSQL accepts a correlated scalar subquery that returns at most one
/// row at run time (catalog queries from SQLAlchemy and JDBC are full of
/// them); DataFusion insists the subquery be aggregated. Wrapping its single
/// output in `first_value(...)` gives the same answer for zero or one row.
pub fn aggregate_scalar_subqueries(stmt: &mut Statement) {
    struct Rewriter;
    impl VisitorMut for Rewriter {
        type Break = ();
        fn post_visit_expr(&mut self, expr: &mut Expr) -> ControlFlow<()> {
            if let Some(replacement) = CALL_REWRITES.iter().find_map(|rewrite| rewrite(expr)) {
                *expr = replacement;
                return ControlFlow::Continue(());
            }
            if let Expr::Subquery(query) = expr {
                if reads_only_relations_without_rows(query) {
                    *expr = Expr::Value(datafusion::sql::sqlparser::ast::Value::Null.into());
                    return ControlFlow::Continue(());
                }
                if let SetExpr::Select(select) = query.body.as_mut() {
                    let ungrouped =
                        matches!(&select.group_by, GroupByExpr::Expressions(e, _) if e.is_empty());
                    if ungrouped && select.projection.len() == 1 && select.having.is_none() {
                        if let SelectItem::UnnamedExpr(e)
                        | SelectItem::ExprWithAlias { expr: e, .. } = &mut select.projection[0]
                        {
                            if !has_aggregate(e) && !matches!(e, Expr::Value(_)) {
                                let null = Expr::Value(
                                    datafusion::sql::sqlparser::ast::Value::Null.into(),
                                );
                                let inner = std::mem::replace(e, null);
                                *e = first_value(inner);
                                query.limit_clause = None;
                            }
                        }
                    }
                }
            }
            ControlFlow::Continue(())
        }
    }
    let _ = stmt.visit(&mut Rewriter);
}

/// Catalog relations that never describe a user object: Tidebase has no
/// column defaults, sequences or identity columns.
const EMPTY_FOR_USER_OBJECTS: &[&str] = &["pg_attrdef", "pg_sequence"];

/// Whether a scalar subquery reads only relations that hold nothing about
/// user objects, so its value is NULL. Client catalog queries correlate such
/// subqueries in ways DataFusion cannot decorrelate.
fn reads_only_relations_without_rows(query: &datafusion::sql::sqlparser::ast::Query) -> bool {
    use datafusion::sql::sqlparser::ast::TableFactor;
    let SetExpr::Select(select) = query.body.as_ref() else {
        return false;
    };
    let mut names = Vec::new();
    for from in &select.from {
        let mut factors = vec![&from.relation];
        factors.extend(from.joins.iter().map(|j| &j.relation));
        for f in factors {
            match f {
                TableFactor::Table { name, .. } => {
                    names.push(name.to_string().to_ascii_lowercase())
                }
                _ => return false,
            }
        }
    }
    !names.is_empty()
        && names.iter().all(|n| {
            let last = n.rsplit('.').next().unwrap_or(n);
            EMPTY_FOR_USER_OBJECTS.contains(&last)
        })
}

/// Rewrites of catalog function calls that DataFusion cannot run as
/// clients write them; the first that matches an expression replaces it.
const CALL_REWRITES: &[fn(&Expr) -> Option<Expr>] = &[
    no_reloptions,
    index_definition,
    col_description,
    generate_subscripts,
];

/// The bare name (lower case, without `pg_catalog.`) and the argument list
/// of a call to one of `names`.
fn catalog_call<'a>(
    expr: &'a Expr,
    names: &[&'static str],
) -> Option<(&'static str, &'a [FunctionArg])> {
    let Expr::Function(f) = expr else {
        return None;
    };
    let name = f.name.to_string().to_ascii_lowercase();
    let bare = name.strip_prefix("pg_catalog.").unwrap_or(&name);
    let matched = names.iter().find(|n| **n == bare)?;
    let FunctionArguments::List(list) = &f.args else {
        return None;
    };
    Some((matched, list.args.as_slice()))
}

/// The expressions of a call's arguments, when there are exactly `N`
/// unnamed ones.
fn plain_args<const N: usize>(args: &[FunctionArg]) -> Option<[&Expr; N]> {
    let exprs: Vec<&Expr> = args
        .iter()
        .map(|a| match a {
            FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => Some(e),
            _ => None,
        })
        .collect::<Option<_>>()?;
    exprs.try_into().ok()
}

/// A replacement expression written as SQL.
fn parse_expr(sql: &str) -> Option<Expr> {
    datafusion::sql::sqlparser::parser::Parser::new(
        &datafusion::sql::sqlparser::dialect::PostgreSqlDialect {},
    )
    .try_with_sql(sql)
    .ok()?
    .parse_expr()
    .ok()
}

/// `generate_subscripts(a, 1)` (SQLAlchemy pairs it with `unnest(a)` to
/// number array elements) as `unnest(range(1, array_length(a, 1) + 1))`,
/// which DataFusion zips with the other unnest in the same projection.
fn generate_subscripts(expr: &Expr) -> Option<Expr> {
    let (_, args) = catalog_call(expr, &["generate_subscripts"])?;
    let [array, dim] = plain_args(args)?;
    parse_expr(&format!(
        "unnest(range(1, CAST(array_length({array}, {dim}) AS BIGINT) + 1))"
    ))
}

/// psql's `\d+` lists a table's storage options with
/// `array_to_string(c.reloptions || array(SELECT ... unnest(tc.reloptions)), ', ')`.
/// Tidebase relations have no storage parameters (their options are shown
/// by `tidebase.regions` and the families' comments), so `pg_class` has no
/// `reloptions` and the list is empty, as PostgreSQL prints it for a table
/// without options.
fn no_reloptions(expr: &Expr) -> Option<Expr> {
    let (_, args) = catalog_call(expr, &["array_to_string"])?;
    let first = args.first()?.to_string().to_ascii_lowercase();
    first.contains("reloptions").then(|| {
        Expr::Value(
            datafusion::sql::sqlparser::ast::Value::SingleQuotedString(String::new()).into(),
        )
    })
}

/// `pg_get_indexdef(index, ...)` and `pg_get_constraintdef(constraint, ...)`
/// read a primary key's definition from `pg_catalog.tidebase_index_defs`
/// (psql's `\d` prints it under "Indexes:"); for other objects they fall
/// back to the functions of the catalog crate.
fn index_definition(expr: &Expr) -> Option<Expr> {
    let (name, args) = catalog_call(expr, &["pg_get_indexdef", "pg_get_constraintdef"])?;
    let Some(FunctionArg::Unnamed(FunctionArgExpr::Expr(oid))) = args.first() else {
        return None;
    };
    let (column, fallback) = if name == "pg_get_constraintdef" {
        ("constraintdef", format!(", {expr}"))
    } else {
        ("indexdef", String::new())
    };
    parse_expr(&format!(
        "coalesce((SELECT max(tb_x.{column}) FROM pg_catalog.{} tb_x \
         WHERE tb_x.oid = CAST({oid} AS INT)){fallback})",
        tidebase_catalog::INDEX_DEFS
    ))
}

/// `col_description(relation, column)` (psql's `\d+` shows it as the
/// column's Description) as a look-up in `pg_description`, which holds each
/// region-table column's family.
fn col_description(expr: &Expr) -> Option<Expr> {
    let (_, args) = catalog_call(expr, &["col_description"])?;
    let [relation, column] = plain_args(args)?;
    parse_expr(&format!(
        "(SELECT max(tb_d.description) FROM pg_catalog.pg_description tb_d \
         WHERE tb_d.objoid = CAST({relation} AS INT) AND tb_d.objsubid = CAST({column} AS INT) \
         AND tb_d.classoid = {})",
        tidebase_catalog::PG_CLASS_OID
    ))
}

fn has_aggregate(e: &Expr) -> bool {
    let text = e.to_string().to_ascii_lowercase();
    AGGREGATES.iter().any(|a| text.contains(&format!("{a}(")))
}

fn first_value(arg: Expr) -> Expr {
    Expr::Function(Function {
        name: ObjectName(vec![ObjectNamePart::Identifier(Ident::new("first_value"))]),
        uses_odbc_syntax: false,
        parameters: FunctionArguments::None,
        args: FunctionArguments::List(FunctionArgumentList {
            duplicate_treatment: None,
            args: vec![FunctionArg::Unnamed(FunctionArgExpr::Expr(arg))],
            clauses: vec![],
        }),
        filter: None,
        null_treatment: None,
        over: None,
        within_group: vec![],
    })
}

/// The names PostgreSQL gives a query's result columns where they differ
/// from DataFusion's: an unaliased `count(*)` is `count`, `sum(x) OVER
/// (...)` is `sum`, `x::int` is `x`, `'1'::int` is `int4`, `CASE ...` is
/// `case`, other expressions `?column?`. A `*` in the select list stands
/// for any number of columns, so the names after it count from the end.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ColumnNames {
    leading: Vec<Option<String>>,
    trailing: Vec<Option<String>>,
}

impl ColumnNames {
    /// The names of a statement's result columns (none for other statements).
    pub fn of(stmt: &Statement) -> Self {
        let Statement::Query(query) = stmt else {
            return Self::default();
        };
        let mut body = query.body.as_ref();
        let select = loop {
            match body {
                SetExpr::Select(s) => break s,
                SetExpr::SetOperation { left, .. } => body = left,
                SetExpr::Query(q) => body = q.body.as_ref(),
                _ => return Self::default(),
            }
        };
        let mut names = Self::default();
        let mut after_wildcard = false;
        for item in &select.projection {
            let name = match item {
                SelectItem::UnnamedExpr(e) => Some(figure(e)),
                SelectItem::ExprWithAlias { .. } | SelectItem::ExprWithAliases { .. } => None,
                SelectItem::Wildcard(_) | SelectItem::QualifiedWildcard(..) => {
                    if after_wildcard {
                        // Two wildcards: the columns between cannot be told apart.
                        names.trailing.clear();
                        return names;
                    }
                    after_wildcard = true;
                    continue;
                }
            };
            if after_wildcard {
                names.trailing.push(name);
            } else {
                names.leading.push(name);
            }
        }
        names
    }

    /// Renames the fields of a result schema.
    pub fn apply(&self, schema: &Schema) -> Schema {
        let n = schema.fields().len();
        let fields: Vec<Field> = schema
            .fields()
            .iter()
            .enumerate()
            .map(|(i, f)| {
                let name = if i < self.leading.len() {
                    self.leading[i].as_ref()
                } else if n - i <= self.trailing.len() {
                    self.trailing[self.trailing.len() - (n - i)].as_ref()
                } else {
                    None
                };
                match name {
                    Some(name) => f.as_ref().clone().with_name(name),
                    None => f.as_ref().clone(),
                }
            })
            .collect();
        Schema::new_with_metadata(fields, schema.metadata().clone())
    }
}

/// PostgreSQL's name for an unaliased select-list expression (its
/// `FigureColname`).
fn figure(e: &Expr) -> String {
    figure_inner(e).unwrap_or_else(|| "?column?".to_string())
}

fn ident_name(i: &Ident) -> String {
    if i.quote_style.is_some() {
        i.value.clone()
    } else {
        i.value.to_lowercase()
    }
}

fn figure_inner(e: &Expr) -> Option<String> {
    Some(match e {
        Expr::Identifier(i) => ident_name(i),
        Expr::CompoundIdentifier(parts) => ident_name(parts.last()?),
        Expr::Function(f) => match f.name.0.last()? {
            ObjectNamePart::Identifier(i) => ident_name(i),
            other => other.to_string().to_lowercase(),
        },
        Expr::Nested(inner) | Expr::Collate { expr: inner, .. } => return figure_inner(inner),
        Expr::Cast {
            expr, data_type, ..
        } => match figure_inner(expr) {
            Some(name) => name,
            None => type_name(data_type),
        },
        Expr::TypedString(t) => type_name(&t.data_type),
        Expr::Case { .. } => "case".into(),
        Expr::Exists { .. } => "exists".into(),
        Expr::Array(_) => "array".into(),
        Expr::Interval(_) => "interval".into(),
        Expr::Extract { .. } => "extract".into(),
        Expr::Substring { .. } => "substring".into(),
        Expr::Position { .. } => "position".into(),
        Expr::Overlay { .. } => "overlay".into(),
        Expr::Trim { .. } => "btrim".into(),
        Expr::Ceil { .. } => "ceil".into(),
        Expr::Floor { .. } => "floor".into(),
        Expr::AtTimeZone { .. } => "timezone".into(),
        Expr::Subquery(q) => match q.body.as_ref() {
            SetExpr::Select(s) => match s.projection.first()? {
                SelectItem::UnnamedExpr(e) => return figure_inner(e),
                SelectItem::ExprWithAlias { alias, .. } => ident_name(alias),
                _ => return None,
            },
            _ => return None,
        },
        _ => return None,
    })
}

/// PostgreSQL's internal name of a type, which names a cast's column.
fn type_name(t: &DataType) -> String {
    use DataType as T;
    match t {
        T::Int(_) | T::Integer(_) | T::Int4(_) => "int4",
        T::BigInt(_) | T::Int8(_) => "int8",
        T::SmallInt(_) | T::Int2(_) => "int2",
        T::Real | T::Float4 => "float4",
        T::Double(_) | T::DoublePrecision | T::Float8 | T::Float(_) => "float8",
        T::Boolean | T::Bool => "bool",
        T::Text | T::String(_) => "text",
        T::Varchar(_) | T::CharacterVarying(_) => "varchar",
        T::Char(_) | T::Character(_) => "bpchar",
        T::Numeric(_) | T::Decimal(_) => "numeric",
        T::Date => "date",
        T::Timestamp(_, tz) => match tz {
            datafusion::sql::sqlparser::ast::TimezoneInfo::WithTimeZone
            | datafusion::sql::sqlparser::ast::TimezoneInfo::Tz => "timestamptz",
            _ => "timestamp",
        },
        T::Time(..) => "time",
        T::Interval { .. } => "interval",
        T::Bytea => "bytea",
        T::JSON => "json",
        T::JSONB => "jsonb",
        T::Uuid => "uuid",
        other => return other.to_string().to_lowercase(),
    }
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
    use datafusion::sql::sqlparser::parser::Parser;

    fn rewrite(sql: &str) -> String {
        let mut stmt = Parser::parse_sql(&PostgreSqlDialect {}, sql)
            .unwrap()
            .remove(0);
        aggregate_scalar_subqueries(&mut stmt);
        stmt.to_string()
    }

    fn names(sql: &str) -> ColumnNames {
        ColumnNames::of(&Parser::parse_sql(&PostgreSqlDialect {}, sql).unwrap()[0])
    }

    #[test]
    fn result_columns_are_named_as_postgresql_names_them() {
        let n = |v: &[Option<&str>]| v.iter().map(|s| s.map(String::from)).collect::<Vec<_>>();
        assert_eq!(
            names("SELECT count(*), x, t.y, sum(x) OVER (ORDER BY y), x::int, '1'::int, 1 + 1, CASE WHEN x THEN 1 END, pg_catalog.upper(z) AS u, DATE '2024-01-01', (SELECT max(a) FROM b) FROM t").leading,
            n(&[Some("count"), Some("x"), Some("y"), Some("sum"), Some("x"), Some("int4"), Some("?column?"), Some("case"), None, Some("date"), Some("max")])
        );
        let wild = names("SELECT a, *, rank() OVER () FROM t");
        assert_eq!(wild.leading, n(&[Some("a")]));
        assert_eq!(wild.trailing, n(&[Some("rank")]));
        let schema = Schema::new(
            [
                "a",
                "b",
                "c",
                "rank() ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING",
            ]
            .iter()
            .map(|f| Field::new(*f, datafusion::arrow::datatypes::DataType::Int64, true))
            .collect::<Vec<_>>(),
        );
        let renamed = wild.apply(&schema);
        let got: Vec<&str> = renamed.fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(got, ["a", "b", "c", "rank"]);
        assert_eq!(names("INSERT INTO t VALUES (1)"), ColumnNames::default());
    }

    #[test]
    fn wraps_only_unaggregated_scalar_subqueries() {
        assert_eq!(
            rewrite("SELECT (SELECT d.x FROM d WHERE d.id = t.id) AS v FROM t"),
            "SELECT (SELECT first_value(d.x) FROM d WHERE d.id = t.id) AS v FROM t"
        );
        assert_eq!(
            rewrite("SELECT (SELECT count(*) FROM d WHERE d.id = t.id) FROM t"),
            "SELECT (SELECT count(*) FROM d WHERE d.id = t.id) FROM t"
        );
        assert_eq!(
            rewrite("SELECT CASE WHEN a.atthasdef THEN (SELECT pg_get_expr(d.adbin, d.adrelid) FROM pg_catalog.pg_attrdef d WHERE a.atthasdef) END FROM pg_attribute a"),
            "SELECT CASE WHEN a.atthasdef THEN NULL END FROM pg_attribute a"
        );
        assert_eq!(
            rewrite("SELECT unnest(c.conkey), generate_subscripts(c.conkey, 1) FROM c"),
            "SELECT unnest(c.conkey), unnest(range(1, CAST(array_length(c.conkey, 1) AS BIGINT) + 1)) FROM c"
        );
        assert_eq!(
            rewrite("SELECT 1 FROM t WHERE EXISTS (SELECT 1 FROM d)"),
            "SELECT 1 FROM t WHERE EXISTS (SELECT 1 FROM d)"
        );
    }
}
