//! Frame exclusion: `EXCLUDE CURRENT ROW | GROUP | TIES | NO OTHERS`.
//!
//! PostgreSQL lets a window frame leave out the current row, its peers, or
//! both; neither sqlparser nor DataFusion has the clause. Tidebase adds it in
//! three steps:
//!
//! 1. [`mark`] works on the SQL tokens: it removes the clause from each frame
//!    and records the mode as a marker call,
//!    `tidebase_exclude('ties')`, first in the window's `PARTITION BY` list,
//!    where the grammar accepts any expression.
//! 2. [`rewrite`] works on the parsed statement: it takes the markers out
//!    again and turns each frame-sensitive aggregate or value function whose
//!    window (inline or named) had one into the window function
//!    `tidebase_exclude_<mode>_<function>` over the same, fully spelled-out
//!    window. A `FILTER (WHERE c)` becomes `CASE WHEN c THEN arg END`, and the
//!    result column keeps the function's name.
//! 3. Those window functions ([`register`]) get the frame DataFusion computed
//!    for each row, leave out the excluded rows, and feed the rest to the
//!    aggregate's own accumulator (so types and semantics are DataFusion's
//!    `sum`, `avg`, `min`, ...), or pick the first, last or nth of them.
//!
//! Ranking functions and `lag`/`lead` ignore frames, so an exclusion does not
//! change them; `EXCLUDE NO OTHERS` changes nothing at all.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::ops::{ControlFlow, Range};
use std::sync::Arc;

use datafusion::arrow::array::ArrayRef;
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Schema};
use datafusion::common::{exec_err, not_impl_err, plan_err, ScalarValue};
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::FunctionRegistry;
use datafusion::logical_expr::function::{
    AccumulatorArgs, PartitionEvaluatorArgs, WindowUDFFieldArgs,
};
use datafusion::logical_expr::{
    AggregateUDF, PartitionEvaluator, Signature, TypeSignature, Volatility, WindowUDF,
    WindowUDFImpl,
};
use datafusion::physical_expr::expressions::{Column, Literal};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::prelude::SessionContext;
use datafusion::sql::sqlparser::ast::{
    Expr, Function, FunctionArg, FunctionArgExpr, FunctionArguments, Ident, NamedWindowExpr,
    ObjectName, ObjectNamePart, Query, Select, SetExpr, Statement, Value, VisitMut, VisitorMut,
    WindowSpec, WindowType,
};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::parser::Parser;
use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};

/// The call [`mark`] leaves in a window's PARTITION BY list.
const MARKER: &str = "tidebase_exclude";

/// Which rows of the frame an `EXCLUDE` clause leaves out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Exclusion {
    CurrentRow,
    Group,
    Ties,
    NoOthers,
}

impl Exclusion {
    const ALL: [Exclusion; 4] = [
        Exclusion::CurrentRow,
        Exclusion::Group,
        Exclusion::Ties,
        Exclusion::NoOthers,
    ];

    fn tag(self) -> &'static str {
        match self {
            Exclusion::CurrentRow => "current_row",
            Exclusion::Group => "group",
            Exclusion::Ties => "ties",
            Exclusion::NoOthers => "no_others",
        }
    }

    fn from_tag(tag: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|e| e.tag() == tag)
    }

    /// The rows left out of the frame of row `row`, whose peer group is
    /// `peers` (peers are contiguous: the partition is sorted).
    fn excluded(self, row: usize, peers: &Range<usize>) -> Range<usize> {
        match self {
            Exclusion::CurrentRow => row..row + 1,
            Exclusion::Group | Exclusion::Ties => peers.clone(),
            Exclusion::NoOthers => row..row,
        }
    }
}

/// Aggregates that may carry an exclusion: one argument, or for
/// `string_agg` a value and a constant delimiter.
const AGGREGATES: &[&str] = &[
    "count",
    "sum",
    "avg",
    "min",
    "max",
    "bool_and",
    "bool_or",
    "every",
    "stddev",
    "stddev_samp",
    "stddev_pop",
    "variance",
    "var_samp",
    "var_pop",
    "array_agg",
    "string_agg",
];

/// Window functions that read the frame and may carry an exclusion.
const VALUE_FUNCTIONS: &[&str] = &["first_value", "last_value", "nth_value"];

/// Window functions that ignore the frame, so an exclusion changes nothing.
const FRAMELESS: &[&str] = &[
    "row_number",
    "rank",
    "dense_rank",
    "percent_rank",
    "cume_dist",
    "ntile",
    "lag",
    "lead",
];

fn function_name(exclusion: Exclusion, function: &str) -> String {
    format!("{MARKER}_{}_{function}", exclusion.tag())
}

// ---------------------------------------------------------------------------
// Step 1: tokens.

fn keyword_is(t: &Token, k: &str) -> bool {
    matches!(t, Token::Word(w) if w.quote_style.is_none() && w.value.eq_ignore_ascii_case(k))
}

/// Removes every `EXCLUDE ...` clause that ends a window frame and records
/// its mode as a marker in that window's PARTITION BY list. Text without
/// the clause comes back unchanged.
pub fn mark(sql: &str) -> String {
    let mentions_exclude = sql
        .as_bytes()
        .windows(b"EXCLUDE".len())
        .any(|w| w.eq_ignore_ascii_case(b"EXCLUDE"));
    if !mentions_exclude {
        return sql.to_string();
    }
    let Ok(tokens) = Tokenizer::new(&PostgreSqlDialect {}, sql).tokenize() else {
        return sql.to_string();
    };
    let sig: Vec<usize> = (0..tokens.len())
        .filter(|&i| !matches!(tokens[i], Token::Whitespace(_)))
        .collect();
    let at = |p: usize| sig.get(p).map(|&i| &tokens[i]);
    // Token index -> text to insert after it; token indexes to drop.
    let mut insert_after: HashMap<usize, String> = HashMap::new();
    let mut drop: Vec<Range<usize>> = Vec::new();
    for p in 0..sig.len() {
        if !keyword_is(&tokens[sig[p]], "EXCLUDE") {
            continue;
        }
        // The clause follows a frame bound and closes the window.
        let after_bound = p > 0
            && ["ROW", "PRECEDING", "FOLLOWING"]
                .iter()
                .any(|k| keyword_is(&tokens[sig[p - 1]], k));
        let (exclusion, len) = match (at(p + 1), at(p + 2)) {
            (Some(a), Some(b)) if keyword_is(a, "CURRENT") && keyword_is(b, "ROW") => {
                (Exclusion::CurrentRow, 3)
            }
            (Some(a), Some(b)) if keyword_is(a, "NO") && keyword_is(b, "OTHERS") => {
                (Exclusion::NoOthers, 3)
            }
            (Some(a), _) if keyword_is(a, "GROUP") => (Exclusion::Group, 2),
            (Some(a), _) if keyword_is(a, "TIES") => (Exclusion::Ties, 2),
            _ => continue,
        };
        if !after_bound || !matches!(at(p + len), Some(Token::RParen)) {
            continue;
        }
        // The window's opening parenthesis.
        let mut depth = 0;
        let mut open = None;
        for q in (0..p).rev() {
            match tokens[sig[q]] {
                Token::RParen => depth += 1,
                Token::LParen if depth == 0 => {
                    open = Some(q);
                    break;
                }
                Token::LParen => depth -= 1,
                _ => {}
            }
        }
        let Some(open) = open else { continue };
        let marker = format!("{MARKER}('{}')", exclusion.tag());
        let first = at(open + 1);
        let (anchor, text) = match first {
            Some(t) if keyword_is(t, "PARTITION") => (open + 2, format!(" {marker},")),
            Some(Token::Word(w))
                if w.keyword == Keyword::NoKeyword
                    && !matches!(at(open + 2), Some(Token::LParen) | Some(Token::Period)) =>
            {
                // OVER (base_window ...)
                (open + 1, format!(" PARTITION BY {marker}"))
            }
            _ => (open, format!("PARTITION BY {marker} ")),
        };
        insert_after.insert(sig[anchor], text);
        drop.push(sig[p]..sig[p + len - 1] + 1);
    }
    if drop.is_empty() {
        return sql.to_string();
    }
    let mut out = String::with_capacity(sql.len() + 64);
    for (i, t) in tokens.iter().enumerate() {
        if drop.iter().any(|r| r.contains(&i)) {
            continue;
        }
        out.push_str(&t.to_string());
        if let Some(text) = insert_after.get(&i) {
            out.push_str(text);
        }
    }
    out
}

// ---------------------------------------------------------------------------
// Step 2: the statement.

/// The exclusion a marker call stands for, if `e` is one.
fn marker_of(e: &Expr) -> Option<Exclusion> {
    let Expr::Function(f) = e else { return None };
    if !f.name.to_string().eq_ignore_ascii_case(MARKER) {
        return None;
    }
    let FunctionArguments::List(list) = &f.args else {
        return None;
    };
    match list.args.as_slice() {
        [FunctionArg::Unnamed(FunctionArgExpr::Expr(Expr::Value(v)))] => match &v.value {
            Value::SingleQuotedString(s) => Exclusion::from_tag(s),
            _ => None,
        },
        _ => None,
    }
}

/// Takes the markers out of a window specification.
fn strip(spec: &mut WindowSpec) -> Option<Exclusion> {
    let mut found = None;
    spec.partition_by.retain(|e| match marker_of(e) {
        Some(x) => {
            found = Some(x);
            false
        }
        None => true,
    });
    found
}

/// A named window after its markers were taken out.
#[derive(Clone)]
struct Named {
    spec: WindowSpec,
    exclusion: Option<Exclusion>,
}

/// The window a call runs over, with every reference to a named window
/// resolved, and its exclusion. Does not change `over`.
fn effective(
    over: &WindowType,
    windows: &HashMap<String, Named>,
) -> Result<(WindowSpec, Option<Exclusion>)> {
    let (mut spec, mut exclusion) = match over {
        WindowType::NamedWindow(name) => {
            let named = lookup(windows, name)?;
            (named.spec.clone(), named.exclusion)
        }
        WindowType::WindowSpec(spec) => {
            let mut spec = spec.clone();
            let exclusion = strip(&mut spec);
            (spec, exclusion)
        }
    };
    let mut depth = 0;
    while let Some(base) = spec.window_name.take() {
        depth += 1;
        if depth > windows.len() + 1 {
            return plan_err!("window \"{base}\" refers to itself");
        }
        let named = lookup(windows, &base)?;
        if spec.partition_by.is_empty() {
            spec.partition_by = named.spec.partition_by.clone();
        }
        if spec.order_by.is_empty() {
            spec.order_by = named.spec.order_by.clone();
        }
        if spec.window_frame.is_none() {
            spec.window_frame = named.spec.window_frame.clone();
            exclusion = exclusion.or(named.exclusion);
        }
        spec.window_name = named.spec.window_name.clone();
    }
    Ok((spec, exclusion))
}

fn lookup<'a>(windows: &'a HashMap<String, Named>, name: &Ident) -> Result<&'a Named> {
    let key = normalize(name);
    windows
        .get(&key)
        .ok_or_else(|| DataFusionError::Plan(format!("window \"{key}\" does not exist")))
}

fn normalize(name: &Ident) -> String {
    if name.quote_style.is_some() {
        name.value.clone()
    } else {
        name.value.to_lowercase()
    }
}

/// The function's own name, lower-cased, without a schema.
fn base_name(f: &Function) -> String {
    match f.name.0.last() {
        Some(ObjectNamePart::Identifier(i)) => normalize(i),
        _ => f.name.to_string().to_lowercase(),
    }
}

/// Rewrites every window call whose frame has an `EXCLUDE` clause (see the
/// module docs) and removes the markers [`mark`] left.
pub fn rewrite(stmt: &mut Statement) -> Result<()> {
    // The outermost scope stays empty: a window call outside any query has
    // no named windows.
    let mut rewriter = Rewriter {
        scopes: vec![HashMap::new()],
    };
    match stmt.visit(&mut rewriter) {
        ControlFlow::Break(e) => Err(e),
        ControlFlow::Continue(()) => Ok(()),
    }
}

struct Rewriter {
    /// Named windows of each query being visited, innermost last, above an
    /// empty outermost scope.
    scopes: Vec<HashMap<String, Named>>,
}

fn for_each_select(body: &mut SetExpr, f: &mut dyn FnMut(&mut Select)) {
    match body {
        SetExpr::Select(s) => f(s),
        SetExpr::SetOperation { left, right, .. } => {
            for_each_select(left, f);
            for_each_select(right, f);
        }
        _ => {}
    }
}

impl Rewriter {
    fn windows(&self) -> &HashMap<String, Named> {
        self.scopes
            .last()
            .expect("the outermost scope is never popped")
    }

    /// The replacement for a window call with an exclusion, or `None` when
    /// the call stays as it is (after its markers are removed).
    fn rewrite_call(&self, f: &mut Function) -> Result<Option<String>> {
        let Some(over) = &f.over else {
            return Ok(None);
        };
        let (spec, exclusion) = effective(over, self.windows())?;
        if let Some(WindowType::WindowSpec(own)) = &mut f.over {
            strip(own);
        }
        let exclusion = match exclusion {
            None | Some(Exclusion::NoOthers) => return Ok(None),
            Some(x) => x,
        };
        let name = base_name(f);
        if FRAMELESS.contains(&name.as_str()) {
            return Ok(None);
        }
        if !AGGREGATES.contains(&name.as_str()) && !VALUE_FUNCTIONS.contains(&name.as_str()) {
            return not_impl_err!("EXCLUDE in the frame of {name}()");
        }
        let FunctionArguments::List(list) = &mut f.args else {
            return not_impl_err!("EXCLUDE in the frame of {name}() without arguments");
        };
        if list.duplicate_treatment.is_some() || !list.clauses.is_empty() {
            return not_impl_err!("EXCLUDE in the frame of {name}(DISTINCT ...)");
        }
        let mut args: Vec<Expr> = Vec::new();
        for a in &list.args {
            match a {
                FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => args.push(e.clone()),
                FunctionArg::Unnamed(FunctionArgExpr::Wildcard) if name == "count" => {
                    args.push(Expr::Value(Value::Number("1".into(), false).into()))
                }
                _ => return not_impl_err!("EXCLUDE in the frame of {name}({a})"),
            }
        }
        let expected = if name == "nth_value" || name == "string_agg" {
            2
        } else {
            1
        };
        if args.len() != expected {
            return not_impl_err!(
                "EXCLUDE in the frame of {name}() with {} arguments",
                args.len()
            );
        }
        if let Some(filter) = f.filter.take() {
            let case = format!("CASE WHEN {filter} THEN {} END", args[0]);
            args[0] = Parser::new(&PostgreSqlDialect {})
                .try_with_sql(&case)
                .and_then(|mut p| p.parse_expr())
                .map_err(|e| DataFusionError::Plan(format!("FILTER with EXCLUDE: {e}")))?;
        }
        list.args = args
            .into_iter()
            .map(|e| FunctionArg::Unnamed(FunctionArgExpr::Expr(e)))
            .collect();
        f.name = ObjectName(vec![ObjectNamePart::Identifier(Ident::new(function_name(
            exclusion, &name,
        )))]);
        f.over = Some(WindowType::WindowSpec(spec));
        Ok(Some(name))
    }
}

impl VisitorMut for Rewriter {
    type Break = DataFusionError;

    fn pre_visit_query(&mut self, query: &mut Query) -> ControlFlow<DataFusionError> {
        let mut windows = HashMap::new();
        for_each_select(&mut query.body, &mut |select| {
            for def in &mut select.named_window {
                let (spec, exclusion) = match &mut def.1 {
                    NamedWindowExpr::WindowSpec(spec) => {
                        let exclusion = strip(spec);
                        (spec.clone(), exclusion)
                    }
                    NamedWindowExpr::NamedWindow(base) => (
                        WindowSpec {
                            window_name: Some(base.clone()),
                            partition_by: vec![],
                            order_by: vec![],
                            window_frame: None,
                        },
                        None,
                    ),
                };
                windows.insert(normalize(&def.0), Named { spec, exclusion });
            }
        });
        self.scopes.push(windows);
        ControlFlow::Continue(())
    }

    fn post_visit_query(&mut self, _query: &mut Query) -> ControlFlow<DataFusionError> {
        self.scopes.pop();
        ControlFlow::Continue(())
    }

    fn post_visit_expr(&mut self, expr: &mut Expr) -> ControlFlow<DataFusionError> {
        if let Expr::Function(f) = expr {
            if let Err(e) = self.rewrite_call(f) {
                return ControlFlow::Break(e);
            }
        }
        ControlFlow::Continue(())
    }
}

// ---------------------------------------------------------------------------
// Step 3: the window functions.

/// Registers `tidebase_exclude_<mode>_<function>` for every aggregate and
/// value function above that the session knows.
pub fn register(ctx: &SessionContext) {
    let state = ctx.state();
    for exclusion in [Exclusion::CurrentRow, Exclusion::Group, Exclusion::Ties] {
        for name in AGGREGATES {
            if let Ok(udaf) = state.udaf(name) {
                ctx.register_udwf(WindowUDF::new_from_impl(Excluding::new(
                    exclusion,
                    name,
                    Kind::Aggregate(udaf),
                )));
            }
        }
        for (name, kind) in VALUE_FUNCTIONS
            .iter()
            .zip([Kind::First, Kind::Last, Kind::Nth])
        {
            ctx.register_udwf(WindowUDF::new_from_impl(Excluding::new(
                exclusion, name, kind,
            )));
        }
    }
}

#[derive(Debug, Clone)]
enum Kind {
    Aggregate(Arc<AggregateUDF>),
    First,
    Last,
    Nth,
}

/// An aggregate or value function evaluated over each row's frame minus
/// the rows its exclusion leaves out.
#[derive(Debug)]
struct Excluding {
    name: String,
    exclusion: Exclusion,
    kind: Kind,
    signature: Signature,
}

impl Excluding {
    fn new(exclusion: Exclusion, function: &str, kind: Kind) -> Self {
        let signature = match &kind {
            Kind::Aggregate(udaf) => udaf.signature().clone(),
            Kind::First | Kind::Last => Signature::any(1, Volatility::Immutable),
            Kind::Nth => Signature::one_of(vec![TypeSignature::Any(2)], Volatility::Immutable),
        };
        Self {
            name: function_name(exclusion, function),
            exclusion,
            kind,
            signature,
        }
    }
}

impl PartialEq for Excluding {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}

impl Eq for Excluding {}

impl Hash for Excluding {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.name.hash(state)
    }
}

impl WindowUDFImpl for Excluding {
    fn name(&self) -> &str {
        &self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        match &self.kind {
            Kind::Aggregate(udaf) => udaf.coerce_types(arg_types),
            _ => Ok(arg_types.to_vec()),
        }
    }

    fn field(&self, args: WindowUDFFieldArgs) -> Result<FieldRef> {
        let input = args.input_fields();
        // The aggregate's own field keeps its metadata (a numeric's display
        // rule).
        let field = match &self.kind {
            Kind::Aggregate(udaf) => udaf.return_field(input)?.as_ref().clone(),
            _ => Field::new(args.name(), input[0].data_type().clone(), true),
        };
        Ok(Arc::new(field.with_name(args.name()).with_nullable(true)))
    }

    fn partition_evaluator(
        &self,
        args: PartitionEvaluatorArgs,
    ) -> Result<Box<dyn PartitionEvaluator>> {
        let input_fields = args.input_fields().to_vec();
        let return_field = match &self.kind {
            Kind::Aggregate(udaf) => udaf.return_field(&input_fields)?,
            _ => input_fields[0].clone(),
        };
        Ok(Box::new(Evaluator {
            kind: self.kind.clone(),
            exclusion: self.exclusion,
            n_args: input_fields.len(),
            input_fields,
            return_field,
            row: 0,
            peers: Vec::new(),
            group: 0,
        }))
    }
}

#[derive(Debug)]
struct Evaluator {
    kind: Kind,
    exclusion: Exclusion,
    /// Values hold the arguments, then the ORDER BY columns.
    n_args: usize,
    input_fields: Vec<FieldRef>,
    return_field: FieldRef,
    /// The row `evaluate` is called for next: DataFusion calls it once per
    /// row of the partition, in order.
    row: usize,
    /// The partition's peer groups (equal ORDER BY values), in order.
    peers: Vec<Range<usize>>,
    group: usize,
}

impl Evaluator {
    /// Folds the value column's `pieces` with the aggregate's accumulator.
    /// Arguments after the first (`string_agg`'s delimiter) are constants,
    /// passed as literals taken from `row`.
    fn aggregate(
        &self,
        udaf: &AggregateUDF,
        values: &[ArrayRef],
        row: usize,
        pieces: &[Range<usize>],
    ) -> Result<ScalarValue> {
        let schema = Schema::new(
            self.input_fields
                .iter()
                .map(|f| f.as_ref().clone())
                .collect::<Vec<_>>(),
        );
        let mut exprs: Vec<Arc<dyn PhysicalExpr>> =
            vec![Arc::new(Column::new(self.input_fields[0].name(), 0))];
        for constant in &values[1..self.n_args] {
            exprs.push(Arc::new(Literal::new(ScalarValue::try_from_array(
                constant, row,
            )?)));
        }
        let value = &values[0];
        let mut acc = udaf.accumulator(AccumulatorArgs {
            return_field: self.return_field.clone(),
            schema: &schema,
            ignore_nulls: false,
            order_bys: &[],
            is_reversed: false,
            name: udaf.name(),
            is_distinct: false,
            exprs: &exprs,
            expr_fields: &self.input_fields,
        })?;
        // DataFusion can hand the window function its arguments as they were
        // before the aggregate's own coercion: cast each piece to the type
        // the accumulator expects.
        let expected = self.input_fields[0].data_type();
        for p in pieces {
            let piece = value.slice(p.start, p.len());
            let piece = if piece.data_type() == expected {
                piece
            } else {
                datafusion::arrow::compute::cast(&piece, expected)?
            };
            acc.update_batch(&[piece])?;
        }
        acc.evaluate()
    }
}

impl PartitionEvaluator for Evaluator {
    fn uses_window_frame(&self) -> bool {
        true
    }

    fn evaluate(&mut self, values: &[ArrayRef], range: &Range<usize>) -> Result<ScalarValue> {
        let row = self.row;
        self.row += 1;
        let rows = values[0].len();
        if row == 0 {
            let order: Vec<ArrayRef> = values[self.n_args..].to_vec();
            self.peers = if order.is_empty() {
                std::iter::once(0..rows).collect()
            } else {
                datafusion::arrow::compute::partition(&order)?.ranges()
            };
        }
        while self.group + 1 < self.peers.len() && self.peers[self.group].end <= row {
            self.group += 1;
        }
        let Some(peers) = self.peers.get(self.group).filter(|p| p.contains(&row)) else {
            return exec_err!("window exclusion: row {row} outside its partition of {rows}");
        };
        let excluded = self.exclusion.excluded(row, peers);
        let before = range.start..range.end.min(excluded.start).max(range.start);
        let after = range.start.max(excluded.end).min(range.end)..range.end;
        let mut pieces = vec![before];
        if self.exclusion == Exclusion::Ties && range.contains(&row) {
            pieces.push(row..row + 1);
        }
        pieces.push(after);
        pieces.retain(|p| !p.is_empty());
        let value = &values[0];
        let null = || ScalarValue::try_from(self.return_field.data_type());
        match &self.kind {
            Kind::Aggregate(udaf) => self.aggregate(udaf, values, row, &pieces),
            Kind::First => match pieces.first() {
                Some(p) => ScalarValue::try_from_array(value, p.start),
                None => null(),
            },
            Kind::Last => match pieces.last() {
                Some(p) => ScalarValue::try_from_array(value, p.end - 1),
                None => null(),
            },
            Kind::Nth => {
                let n = match ScalarValue::try_from_array(&values[1], row)? {
                    ScalarValue::Int64(Some(n)) => n,
                    ScalarValue::Int32(Some(n)) => n as i64,
                    ScalarValue::Int16(Some(n)) => n as i64,
                    ScalarValue::Int8(Some(n)) => n as i64,
                    ScalarValue::UInt64(Some(n)) => n as i64,
                    other => return exec_err!("nth_value: bad position {other}"),
                };
                if n <= 0 {
                    return exec_err!("argument of nth_value must be greater than zero");
                }
                let mut left = n as usize;
                for p in &pieces {
                    if left <= p.len() {
                        return ScalarValue::try_from_array(value, p.start + left - 1);
                    }
                    left -= p.len();
                }
                null()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mark_moves_the_clause_into_a_marker() {
        assert_eq!(
            mark("SELECT sum(a) OVER (ORDER BY id ROWS BETWEEN 1 PRECEDING AND 1 FOLLOWING EXCLUDE CURRENT ROW) FROM t"),
            "SELECT sum(a) OVER (PARTITION BY tidebase_exclude('current_row') ORDER BY id ROWS BETWEEN 1 PRECEDING AND 1 FOLLOWING ) FROM t"
        );
        assert_eq!(
            mark("SELECT sum(a) OVER (PARTITION BY g ORDER BY id ROWS UNBOUNDED PRECEDING EXCLUDE TIES) FROM t"),
            "SELECT sum(a) OVER (PARTITION BY tidebase_exclude('ties'), g ORDER BY id ROWS UNBOUNDED PRECEDING ) FROM t"
        );
        assert_eq!(
            mark("SELECT sum(a) OVER w FROM t WINDOW w AS (ORDER BY id GROUPS CURRENT ROW exclude group)"),
            "SELECT sum(a) OVER w FROM t WINDOW w AS (PARTITION BY tidebase_exclude('group') ORDER BY id GROUPS CURRENT ROW )"
        );
        assert_eq!(
            mark("SELECT sum(a) OVER (w ROWS CURRENT ROW EXCLUDE NO OTHERS) FROM t WINDOW w AS (ORDER BY id)"),
            "SELECT sum(a) OVER (w PARTITION BY tidebase_exclude('no_others') ROWS CURRENT ROW ) FROM t WINDOW w AS (ORDER BY id)"
        );
        // Not a frame's clause: left alone.
        let q = "SELECT exclude FROM t WHERE 'EXCLUDE TIES' <> ''";
        assert_eq!(mark(q), q);
    }

    fn rewritten(sql: &str) -> String {
        let mut stmt = Parser::parse_sql(&PostgreSqlDialect {}, &mark(sql))
            .unwrap()
            .remove(0);
        rewrite(&mut stmt).unwrap();
        stmt.to_string()
    }

    #[test]
    fn rewrite_spells_out_the_window() {
        assert_eq!(
            rewritten("SELECT count(*) FILTER (WHERE a > 1) OVER w, rank() OVER w FROM t WINDOW w AS (PARTITION BY g ORDER BY id ROWS BETWEEN 1 PRECEDING AND CURRENT ROW EXCLUDE CURRENT ROW)"),
            "SELECT tidebase_exclude_current_row_count(CASE WHEN a > 1 THEN 1 END) OVER (PARTITION BY g ORDER BY id ROWS BETWEEN 1 PRECEDING AND CURRENT ROW), rank() OVER w FROM t WINDOW w AS (PARTITION BY g ORDER BY id ROWS BETWEEN 1 PRECEDING AND CURRENT ROW)"
        );
        assert_eq!(
            rewritten("SELECT 1 + sum(a) OVER (w ROWS CURRENT ROW EXCLUDE TIES) FROM t WINDOW w AS (ORDER BY id)"),
            "SELECT 1 + tidebase_exclude_ties_sum(a) OVER (ORDER BY id ROWS CURRENT ROW) FROM t WINDOW w AS (ORDER BY id)"
        );
        assert_eq!(
            rewritten("SELECT sum(a) OVER (ORDER BY id ROWS CURRENT ROW EXCLUDE NO OTHERS) FROM t"),
            "SELECT sum(a) OVER (ORDER BY id ROWS CURRENT ROW) FROM t"
        );
        assert_eq!(
            rewritten("SELECT string_agg(a, ',') OVER (ORDER BY id ROWS CURRENT ROW EXCLUDE TIES) FROM t"),
            "SELECT tidebase_exclude_ties_string_agg(a, ',') OVER (ORDER BY id ROWS CURRENT ROW) FROM t"
        );
        let mut stmt = Parser::parse_sql(
            &PostgreSqlDialect {},
            &mark(
                "SELECT percentile_cont(a) OVER (ORDER BY id ROWS CURRENT ROW EXCLUDE TIES) FROM t",
            ),
        )
        .unwrap()
        .remove(0);
        assert!(matches!(
            rewrite(&mut stmt),
            Err(DataFusionError::NotImplemented(_))
        ));
    }
}
