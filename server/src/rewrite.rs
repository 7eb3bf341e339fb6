//! SQL rewrites applied after parsing, for client queries DataFusion cannot
//! plan as PostgreSQL writes them.

use std::ops::ControlFlow;

use datafusion::sql::sqlparser::ast::{
    Expr, Function, FunctionArg, FunctionArgExpr, FunctionArgumentList, FunctionArguments,
    GroupByExpr, Ident, ObjectName, ObjectNamePart, SelectItem, SetExpr, Statement, VisitMut,
    VisitorMut,
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
            if let Some(replacement) = generate_subscripts(expr) {
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

/// `generate_subscripts(a, 1)` (SQLAlchemy pairs it with `unnest(a)` to
/// number array elements) as `unnest(range(1, array_length(a, 1) + 1))`,
/// which DataFusion zips with the other unnest in the same projection.
fn generate_subscripts(expr: &Expr) -> Option<Expr> {
    let Expr::Function(f) = expr else {
        return None;
    };
    let name = f.name.to_string().to_ascii_lowercase();
    if name != "generate_subscripts" && name != "pg_catalog.generate_subscripts" {
        return None;
    }
    let FunctionArguments::List(list) = &f.args else {
        return None;
    };
    let [FunctionArg::Unnamed(FunctionArgExpr::Expr(array)), FunctionArg::Unnamed(FunctionArgExpr::Expr(dim))] =
        list.args.as_slice()
    else {
        return None;
    };
    let sql = format!("unnest(range(1, CAST(array_length({array}, {dim}) AS BIGINT) + 1))");
    datafusion::sql::sqlparser::parser::Parser::new(
        &datafusion::sql::sqlparser::dialect::PostgreSqlDialect {},
    )
    .try_with_sql(&sql)
    .ok()?
    .parse_expr()
    .ok()
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
