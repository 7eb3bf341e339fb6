//! PostgreSQL's `numeric` results of `avg`, `variance` and `stddev` over
//! integers.
//!
//! PostgreSQL computes these in exact decimal arithmetic and gives each value
//! its own display scale: a quotient is rounded (half away from zero) to
//! `16 - 4 * qweight` digits after the point, where `qweight` estimates the
//! quotient's weight in base-10000 digits from the first digits of dividend
//! and divisor (`select_div_scale` in PostgreSQL's `numeric.c`). So
//! `avg(1, 2)` is `1.5000000000000000` and `avg(1, 3)` is `2.0000000000000000`.
//!
//! Here the aggregates sum exactly (128- and 256-bit integers), compute the
//! same scale, round at it, and return a `Decimal256(76, 20)` (a value
//! DataFusion can go on computing with, wide enough for any variance of
//! bigints). The digits past PostgreSQL's
//! scale are zeros. Arrow types have one scale per column, so the display
//! scale is recovered per value when a result is printed
//! ([`display_scale`]): from the value's own base-10000 weight, widened to
//! its last non-zero digit. The result field carries [`NUMERIC_DISPLAY`] in
//! its metadata so the wire encoder knows which rule applies.
//!
//! What cannot match: where PostgreSQL's weight estimate is one less than the
//! value's weight (dividend and divisor with equal first digits, as in
//! `avg(1, 1)`) and the quotient ends early, PostgreSQL prints four more
//! zeros; and digits past the 20th decimal (quotients below 0.0001) are
//! rounded away. `sum` over bigint keeps DataFusion's bigint.

use std::collections::HashSet;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, Int64Array};
use datafusion::arrow::datatypes::{
    i256, DataType, Field, FieldRef, Int16Type, Int32Type, Int64Type,
};
use datafusion::arrow::error::ArrowError;
use datafusion::common::{exec_err, ScalarValue};
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::utils::format_state_name;
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, Documentation, GroupsAccumulator, ReversedUDAF,
    SetMonotonicity, Signature, TypeSignature, Volatility,
};

/// Field metadata key on a decimal result whose values each have their
/// own PostgreSQL display scale; the value says which rule ([`NumericKind`]).
pub const NUMERIC_DISPLAY: &str = "tidebase.numeric_display";

/// Digits after the point that the results carry.
pub const RESULT_SCALE: i8 = 20;
const RESULT_PRECISION: u8 = 76;

/// PostgreSQL's `NUMERIC_MIN_SIG_DIGITS`.
const MIN_SIG_DIGITS: i32 = 16;

/// The aggregates whose integer forms return numeric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NumericKind {
    Avg,
    VarSamp,
    VarPop,
    StddevSamp,
    StddevPop,
}

impl NumericKind {
    /// The [`NUMERIC_DISPLAY`] value of its results.
    pub fn display_rule(self) -> &'static str {
        match self {
            NumericKind::Avg => "avg",
            NumericKind::VarSamp | NumericKind::VarPop => "variance",
            NumericKind::StddevSamp | NumericKind::StddevPop => "stddev",
        }
    }

    fn is_stddev(self) -> bool {
        matches!(self, NumericKind::StddevSamp | NumericKind::StddevPop)
    }

    fn is_sample(self) -> bool {
        matches!(self, NumericKind::VarSamp | NumericKind::StddevSamp)
    }
}

/// The display scale of `value` (a decimal at `scale`) for the rule named by
/// a [`NUMERIC_DISPLAY`] value; `None` for an unknown rule.
pub fn display_scale(rule: &str, value: i256, scale: i8) -> Option<u8> {
    let scale = scale.max(0) as u32;
    let magnitude = value.wrapping_abs();
    let zero_scale = match rule {
        "avg" => scale,
        "variance" | "stddev" => 0,
        _ => return None,
    };
    if magnitude == i256::ZERO {
        return Some(zero_scale as u8);
    }
    // floor(log10(|value|)): for stddev, of the variance it came from.
    let decimal_exponent = if rule == "stddev" {
        // log10 of the square from the leading digits (the square itself
        // can pass 256 bits).
        let digits = magnitude.ilog10();
        let leading = magnitude
            .wrapping_div(pow10(digits.saturating_sub(17)))
            .as_i128() as f64
            / 10f64.powi(digits.min(17) as i32);
        (2 * digits + u32::from(leading * leading >= 10.0)) as i32 - 2 * scale as i32
    } else {
        magnitude.ilog10() as i32 - scale as i32
    };
    let weight = decimal_exponent.div_euclid(4);
    let base = MIN_SIG_DIGITS - 4 * weight;
    let last_nonzero = scale as i32 - trailing_decimal_zeros(magnitude).min(scale) as i32;
    Some(base.max(last_nonzero).clamp(0, scale as i32) as u8)
}

fn trailing_decimal_zeros(mut v: i256) -> u32 {
    let ten = i256::from_i128(10);
    let mut zeros = 0;
    while v != i256::ZERO && v.wrapping_rem(ten) == i256::ZERO {
        v = v.wrapping_div(ten);
        zeros += 1;
    }
    zeros
}

/// PostgreSQL's numeric forms of avg, variance and stddev, registered in
/// place of DataFusion's (which keep serving every other input type).
pub(crate) fn aggregates() -> Vec<AggregateUDF> {
    use datafusion::functions_aggregate::{stddev, variance};
    let wrap = |kind, inner: Arc<AggregateUDF>, extra: &[&str]| {
        let inner = inner.as_ref().clone();
        let mut aliases: Vec<String> = inner.aliases().to_vec();
        aliases.extend(extra.iter().map(|s| s.to_string()));
        AggregateUDF::new_from_impl(PgNumericAggregate::new(kind, inner, aliases))
    };
    vec![
        avg_udaf(),
        // PostgreSQL's `variance` is the sample variance.
        wrap(
            NumericKind::VarSamp,
            variance::var_samp_udaf(),
            &["variance"],
        ),
        wrap(NumericKind::VarPop, variance::var_pop_udaf(), &[]),
        wrap(NumericKind::StddevSamp, stddev::stddev_udaf(), &[]),
        wrap(NumericKind::StddevPop, stddev::stddev_pop_udaf(), &[]),
    ]
}

/// Casts from decimals as PostgreSQL casts numerics: to an integer, rounded
/// half away from zero (Arrow truncates); to float8, the nearest double to the
/// decimal (Arrow divides in floating point, off by one unit in the last place
/// at times). Runs after DataFusion's type coercion, so the casts it inserts
/// (comparing a numeric with a float8) are rewritten too.
#[derive(Debug, Default)]
pub(crate) struct DecimalCasts;

impl datafusion::optimizer::AnalyzerRule for DecimalCasts {
    fn name(&self) -> &str {
        "tidebase_decimal_casts"
    }

    fn analyze(
        &self,
        plan: datafusion::logical_expr::LogicalPlan,
        _config: &datafusion::config::ConfigOptions,
    ) -> Result<datafusion::logical_expr::LogicalPlan> {
        use datafusion::common::tree_node::{Transformed, TreeNode};
        use datafusion::logical_expr::expr_rewriter::NamePreserver;
        use datafusion::logical_expr::{Cast, Expr, ExprSchemable};
        let round = Arc::new(datafusion::logical_expr::ScalarUDF::new_from_impl(
            DecimalRound::default(),
        ));
        let to_float = Arc::new(datafusion::logical_expr::ScalarUDF::new_from_impl(
            DecimalToFloat::default(),
        ));
        plan.transform_up_with_subqueries(|plan| {
            if plan.inputs().is_empty() {
                return Ok(Transformed::no(plan));
            }
            let schema = datafusion::logical_expr::utils::merge_schema(&plan.inputs());
            let names = NamePreserver::new(&plan);
            plan.map_expressions(|e| {
                let name = names.save(&e);
                let rewritten = e.transform_up(|e| {
                    let Expr::Cast(Cast { expr, field }) = &e else {
                        return Ok(Transformed::no(e));
                    };
                    let from_decimal = matches!(
                        expr.get_type(&schema),
                        Ok(DataType::Decimal128(..) | DataType::Decimal256(..))
                    );
                    let wrapped = match field.data_type() {
                        _ if !from_decimal => return Ok(Transformed::no(e)),
                        t if t.is_integer() => round.call(vec![expr.as_ref().clone()]),
                        DataType::Float64 | DataType::Float32 => {
                            to_float.call(vec![expr.as_ref().clone()])
                        }
                        _ => return Ok(Transformed::no(e)),
                    };
                    Ok(Transformed::yes(Expr::Cast(Cast::new_from_field(
                        Box::new(wrapped),
                        field.clone(),
                    ))))
                })?;
                Ok(rewritten.update_data(|e| name.restore(e)))
            })
        })
        .map(|t| t.data)
    }
}

/// A decimal rounded half away from zero to a whole number, in its own type.
#[derive(Debug, PartialEq, Eq, Hash)]
struct DecimalRound {
    signature: Signature,
}

impl Default for DecimalRound {
    fn default() -> Self {
        Self {
            signature: Signature::any(1, Volatility::Immutable),
        }
    }
}

impl datafusion::logical_expr::ScalarUDFImpl for DecimalRound {
    fn name(&self) -> &str {
        "tidebase_numeric_round"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        Ok(arg_types[0].clone())
    }

    fn invoke_with_args(
        &self,
        args: datafusion::logical_expr::ScalarFunctionArgs,
    ) -> Result<datafusion::logical_expr::ColumnarValue> {
        use datafusion::arrow::compute::kernels::arity::unary;
        use datafusion::arrow::datatypes::{Decimal128Type, Decimal256Type};
        let arrays = datafusion::logical_expr::ColumnarValue::values_to_arrays(&args.args)?;
        let array = &arrays[0];
        let rounded: ArrayRef = match array.data_type() {
            DataType::Decimal128(p, s) => {
                let unit = pow10(u32::from(s.unsigned_abs()));
                let out: datafusion::arrow::array::Decimal128Array =
                    unary(array.as_primitive::<Decimal128Type>(), |v| {
                        round_whole(i256::from_i128(v), unit).as_i128()
                    });
                Arc::new(out.with_precision_and_scale(*p, *s)?)
            }
            DataType::Decimal256(p, s) => {
                let unit = pow10(u32::from(s.unsigned_abs()));
                let out: datafusion::arrow::array::Decimal256Array =
                    unary(array.as_primitive::<Decimal256Type>(), |v| {
                        round_whole(v, unit)
                    });
                Arc::new(out.with_precision_and_scale(*p, *s)?)
            }
            _ => array.clone(),
        };
        Ok(datafusion::logical_expr::ColumnarValue::Array(rounded))
    }
}

/// `v` (a decimal with `unit` = 10^scale) rounded half away from zero to a
/// multiple of `unit`.
fn round_whole(v: i256, unit: i256) -> i256 {
    round_div(v, unit).wrapping_mul(unit)
}

/// A decimal as the nearest float8: its decimal text, parsed.
#[derive(Debug, PartialEq, Eq, Hash)]
struct DecimalToFloat {
    signature: Signature,
}

impl Default for DecimalToFloat {
    fn default() -> Self {
        Self {
            signature: Signature::any(1, Volatility::Immutable),
        }
    }
}

impl datafusion::logical_expr::ScalarUDFImpl for DecimalToFloat {
    fn name(&self) -> &str {
        "tidebase_numeric_float8"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Float64)
    }

    fn invoke_with_args(
        &self,
        args: datafusion::logical_expr::ScalarFunctionArgs,
    ) -> Result<datafusion::logical_expr::ColumnarValue> {
        let arrays = datafusion::logical_expr::ColumnarValue::values_to_arrays(&args.args)?;
        // Arrow's display of a decimal is its exact decimal text.
        let text = datafusion::arrow::compute::cast(&arrays[0], &DataType::Utf8)?;
        let floats: datafusion::arrow::array::Float64Array = text
            .as_string::<i32>()
            .iter()
            .map(|v| v.and_then(|v| v.parse::<f64>().ok()))
            .collect();
        Ok(datafusion::logical_expr::ColumnarValue::Array(Arc::new(
            floats,
        )))
    }
}

/// Tidebase's `avg`, as SQL calls it: numeric over integers, DataFusion's
/// avg for everything else.
pub fn avg_udaf() -> AggregateUDF {
    let inner = datafusion::functions_aggregate::average::avg_udaf()
        .as_ref()
        .clone();
    let aliases = inner.aliases().to_vec();
    AggregateUDF::new_from_impl(PgNumericAggregate::new(NumericKind::Avg, inner, aliases))
}

/// `avg(expr)` with [`avg_udaf`].
pub fn avg(expr: datafusion::prelude::Expr) -> datafusion::prelude::Expr {
    avg_udaf().call(vec![expr])
}

/// One of the five aggregates: integers take the exact path here, every
/// other input goes to DataFusion's own function.
#[derive(Debug)]
struct PgNumericAggregate {
    kind: NumericKind,
    inner: AggregateUDF,
    aliases: Vec<String>,
    signature: Signature,
}

impl PartialEq for PgNumericAggregate {
    fn eq(&self, other: &Self) -> bool {
        self.kind == other.kind && self.inner == other.inner
    }
}
impl Eq for PgNumericAggregate {}
impl Hash for PgNumericAggregate {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.kind.hash(state);
        self.inner.hash(state);
    }
}

impl PgNumericAggregate {
    fn new(kind: NumericKind, inner: AggregateUDF, aliases: Vec<String>) -> Self {
        // Integer types first, so that an integer argument is never widened to
        // float8 by the fallback signature; smaller integers widen to int2.
        let mut signatures: Vec<TypeSignature> =
            [DataType::Int16, DataType::Int32, DataType::Int64]
                .into_iter()
                .map(|t| TypeSignature::Exact(vec![t]))
                .collect();
        match &inner.signature().type_signature {
            TypeSignature::OneOf(inner) => signatures.extend(inner.iter().cloned()),
            other => signatures.push(other.clone()),
        }
        Self {
            kind,
            signature: Signature::one_of(signatures, Volatility::Immutable),
            inner,
            aliases,
        }
    }

    fn is_integer(t: &DataType) -> bool {
        matches!(t, DataType::Int16 | DataType::Int32 | DataType::Int64)
    }

    fn result_field(&self, name: &str) -> Field {
        Field::new(
            name,
            DataType::Decimal256(RESULT_PRECISION, RESULT_SCALE),
            true,
        )
        .with_metadata(
            [(
                NUMERIC_DISPLAY.to_string(),
                self.kind.display_rule().to_string(),
            )]
            .into(),
        )
    }
}

impl AggregateUDFImpl for PgNumericAggregate {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn aliases(&self) -> &[String] {
        &self.aliases
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        match arg_types {
            [t] if Self::is_integer(t) => Ok(DataType::Decimal256(RESULT_PRECISION, RESULT_SCALE)),
            _ => self.inner.return_type(arg_types),
        }
    }

    fn return_field(&self, arg_fields: &[FieldRef]) -> Result<FieldRef> {
        match arg_fields {
            [f] if Self::is_integer(f.data_type()) => Ok(Arc::new(self.result_field(self.name()))),
            _ => self.inner.return_field(arg_fields),
        }
    }

    fn accumulator(&self, args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        if !integer_input(args.expr_fields) {
            return self.inner.accumulator(args);
        }
        if args.is_distinct {
            Ok(Box::new(DistinctAccumulator {
                kind: self.kind,
                values: HashSet::new(),
            }))
        } else {
            Ok(Box::new(SumsAccumulator::new(self.kind)))
        }
    }

    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        if !integer_input(args.input_fields) {
            return self.inner.state_fields(args);
        }
        let field = |what, t| Arc::new(Field::new(format_state_name(args.name, what), t, true));
        if args.is_distinct {
            return Ok(vec![field(
                "distinct",
                DataType::List(Arc::new(Field::new_list_field(DataType::Int64, true))),
            )]);
        }
        Ok(vec![
            field("count", DataType::Int64),
            field("sum", DataType::Decimal128(38, 0)),
            field("sum_squares", DataType::Decimal256(76, 0)),
        ])
    }

    fn groups_accumulator_supported(&self, args: AccumulatorArgs) -> bool {
        !integer_input(args.expr_fields) && self.inner.groups_accumulator_supported(args)
    }

    fn create_groups_accumulator(
        &self,
        args: AccumulatorArgs,
    ) -> Result<Box<dyn GroupsAccumulator>> {
        self.inner.create_groups_accumulator(args)
    }

    fn create_sliding_accumulator(&self, args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        if integer_input(args.expr_fields) && !args.is_distinct {
            return Ok(Box::new(SumsAccumulator::new(self.kind)));
        }
        self.inner.create_sliding_accumulator(args)
    }

    fn reverse_expr(&self) -> ReversedUDAF {
        ReversedUDAF::Identical
    }

    fn set_monotonicity(&self, data_type: &DataType) -> SetMonotonicity {
        self.inner.inner().set_monotonicity(data_type)
    }

    fn documentation(&self) -> Option<&Documentation> {
        self.inner.documentation()
    }
}

fn integer_input(fields: &[FieldRef]) -> bool {
    matches!(fields, [f] if PgNumericAggregate::is_integer(f.data_type()))
}

/// Calls `f` with each non-null value of an integer array.
fn for_each_integer(array: &ArrayRef, mut f: impl FnMut(i64)) -> Result<()> {
    macro_rules! each {
        ($t:ty) => {{
            let a = array.as_primitive::<$t>();
            if a.null_count() == 0 {
                a.values().iter().for_each(|v| f(i64::from(*v)));
            } else {
                a.iter().flatten().for_each(|v| f(i64::from(v)));
            }
        }};
    }
    match array.data_type() {
        DataType::Int16 => each!(Int16Type),
        DataType::Int32 => each!(Int32Type),
        DataType::Int64 => each!(Int64Type),
        other => return exec_err!("numeric aggregate over {other}"),
    }
    Ok(())
}

/// Count, sum and sum of squares of the values seen.
#[derive(Debug, Default, Clone, Copy)]
struct Sums {
    count: i64,
    sum: i128,
    squares: i256,
}

impl Sums {
    fn add(&mut self, v: i64, sign: i64) {
        self.count += sign;
        let v = i128::from(v);
        self.sum += v * i128::from(sign);
        self.squares = self
            .squares
            .wrapping_add(i256::from_i128(v * v * i128::from(sign)));
    }

    fn evaluate(&self, kind: NumericKind) -> Result<ScalarValue> {
        let value = match kind {
            NumericKind::Avg if self.count == 0 => None,
            NumericKind::Avg => Some(average(self.sum, self.count)?),
            _ => self.variance(kind)?,
        };
        Ok(ScalarValue::Decimal256(
            value,
            RESULT_PRECISION,
            RESULT_SCALE,
        ))
    }

    /// PostgreSQL's `numeric_stddev_internal`: the variance is
    /// `(N * sum(x²) - sum(x)²) / (N * (N - 1))` (or `N * N` for the
    /// population), rounded at its division scale; stddev is its square root
    /// rounded at the same scale.
    fn variance(&self, kind: NumericKind) -> Result<Option<i256>> {
        let n = i256::from_i128(i128::from(self.count));
        if self.count == 0 || kind.is_sample() && self.count == 1 {
            return Ok(None);
        }
        let sum = i256::from_i128(self.sum);
        let numerator = n
            .checked_mul(self.squares)
            .and_then(|a| sum.checked_mul(sum).and_then(|b| a.checked_sub(b)))
            .ok_or_else(|| overflow("variance"))?;
        if numerator <= i256::ZERO {
            return Ok(Some(i256::ZERO));
        }
        let denominator = if kind.is_sample() {
            n.wrapping_mul(n.wrapping_sub(i256::ONE))
        } else {
            n.wrapping_mul(n)
        };
        let (variance, scale) = divide_at(numerator, denominator, "variance")?;
        let value = if kind.is_stddev() {
            // sqrt(variance) scaled by 10^scale, with one more digit to round.
            let radicand = variance
                .checked_mul(pow10(scale + 2))
                .ok_or_else(|| overflow("stddev"))?;
            let tenfold = isqrt(radicand);
            (tenfold.wrapping_add(i256::from_i128(5))).wrapping_div(i256::from_i128(10))
        } else {
            variance
        };
        rescale(value, scale).map(Some)
    }
}

/// `avg` of `count` values summing to `sum`, as a `Decimal256(76, 20)`
/// value: what the numeric avg over integers returns.
pub fn average(sum: i128, count: i64) -> Result<i256> {
    match small_average(sum, count) {
        Some(v) => Ok(v),
        None => divide(i256::from_i128(sum), i256::from_i128(i128::from(count))),
    }
}

/// [`divide`] in 128-bit arithmetic, for the common case: `|sum| < 10^18`,
/// so `|sum| · 10^20` fits (a window's moving average computes one per row).
fn small_average(sum: i128, count: i64) -> Option<i256> {
    const LIMIT: u128 = 1_000_000_000_000_000_000;
    let magnitude = sum.unsigned_abs();
    if magnitude >= LIMIT || count <= 0 {
        return None;
    }
    let count = count as u128;
    let weight = |mut v: u128| {
        let mut w = 0;
        while v >= 10_000 {
            v /= 10_000;
            w += 1;
        }
        (w, v)
    };
    let scale = division_scale(weight(magnitude), weight(count));
    let scaled = magnitude * 10u128.pow(scale);
    let mut q = scaled / count;
    if 2 * (scaled % count) >= count {
        q += 1;
    }
    let value = (q * 10u128.pow(RESULT_SCALE as u32 - scale)) as i128;
    Some(i256::from_i128(if sum < 0 { -value } else { value }))
}

/// `num / den` rounded as PostgreSQL's `numeric_div` rounds it, at
/// [`RESULT_SCALE`].
fn divide(num: i256, den: i256) -> Result<i256> {
    let (quotient, scale) = divide_at(num, den, "avg")?;
    rescale(quotient, scale)
}

/// `num / den` rounded at PostgreSQL's division scale (at most
/// [`RESULT_SCALE`]): the quotient scaled by 10^scale, and the scale.
fn divide_at(num: i256, den: i256, what: &str) -> Result<(i256, u32)> {
    let scale = division_scale(
        weight_and_first_digit(num.wrapping_abs()),
        weight_and_first_digit(den.wrapping_abs()),
    );
    let scaled = num
        .checked_mul(pow10(scale))
        .ok_or_else(|| overflow(what))?;
    Ok((round_div(scaled, den), scale))
}

/// A value at `scale` digits as a `Decimal256(76, RESULT_SCALE)`.
fn rescale(value: i256, scale: u32) -> Result<i256> {
    value
        .checked_mul(pow10(RESULT_SCALE as u32 - scale))
        .filter(|v| v.wrapping_abs() < pow10(u32::from(RESULT_PRECISION)))
        .ok_or_else(|| overflow("numeric"))
}

fn overflow(what: &str) -> DataFusionError {
    DataFusionError::ArrowError(
        Box::new(ArrowError::ArithmeticOverflow(format!(
            "numeric field overflow: the {what} does not fit numeric({RESULT_PRECISION}, {RESULT_SCALE})"
        ))),
        None,
    )
}

/// 10^exp.
pub fn pow10(exp: u32) -> i256 {
    i256::from_i128(10).wrapping_pow(exp)
}

/// `num / den` rounded half away from zero (`den > 0`).
fn round_div(num: i256, den: i256) -> i256 {
    let magnitude = num.wrapping_abs();
    let quotient = magnitude.wrapping_div(den);
    let remainder = magnitude.wrapping_rem(den);
    let rounded = if remainder.wrapping_mul(i256::from_i128(2)) >= den {
        quotient.wrapping_add(i256::ONE)
    } else {
        quotient
    };
    if num.is_negative() {
        rounded.wrapping_neg()
    } else {
        rounded
    }
}

/// PostgreSQL's `select_div_scale` for two integers, given by their
/// base-10000 weights and first digits, capped at [`RESULT_SCALE`].
fn division_scale<D: PartialOrd>((w1, d1): (i32, D), (w2, d2): (i32, D)) -> u32 {
    let mut qweight = w1 - w2;
    if d1 <= d2 {
        qweight -= 1;
    }
    (MIN_SIG_DIGITS - qweight * 4).clamp(0, RESULT_SCALE as i32) as u32
}

/// The base-10000 weight and first digit of a non-negative integer (0, 0 for
/// zero, as PostgreSQL takes them).
fn weight_and_first_digit(mut v: i256) -> (i32, i256) {
    let base = i256::from_i128(10_000);
    let mut weight = 0;
    while v >= base {
        v = v.wrapping_div(base);
        weight += 1;
    }
    (weight, v)
}

/// floor(sqrt(v)) for v >= 0.
fn isqrt(v: i256) -> i256 {
    if v <= i256::ONE {
        return v.max(i256::ZERO);
    }
    // Newton's method from a power of two above the root.
    let bits = 256 - v.leading_zeros();
    let mut x = i256::ONE.wrapping_mul(i256::from_i128(2).wrapping_pow(bits.div_ceil(2)));
    loop {
        let next = x
            .wrapping_add(v.wrapping_div(x))
            .wrapping_div(i256::from_i128(2));
        if next >= x {
            return x;
        }
        x = next;
    }
}

#[derive(Debug)]
struct SumsAccumulator {
    kind: NumericKind,
    sums: Sums,
}

impl SumsAccumulator {
    fn new(kind: NumericKind) -> Self {
        Self {
            kind,
            sums: Sums::default(),
        }
    }
}

impl Accumulator for SumsAccumulator {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        for_each_integer(&values[0], |v| self.sums.add(v, 1))
    }

    fn retract_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        for_each_integer(&values[0], |v| self.sums.add(v, -1))
    }

    fn supports_retract_batch(&self) -> bool {
        true
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        let counts = states[0].as_primitive::<Int64Type>();
        let sums = states[1].as_primitive::<datafusion::arrow::datatypes::Decimal128Type>();
        let squares = states[2].as_primitive::<datafusion::arrow::datatypes::Decimal256Type>();
        for i in 0..counts.len() {
            if counts.is_null(i) {
                continue;
            }
            self.sums.count += counts.value(i);
            self.sums.sum += sums.value(i);
            self.sums.squares = self.sums.squares.wrapping_add(squares.value(i));
        }
        Ok(())
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        Ok(vec![
            ScalarValue::Int64(Some(self.sums.count)),
            ScalarValue::Decimal128(Some(self.sums.sum), 38, 0),
            ScalarValue::Decimal256(Some(self.sums.squares), 76, 0),
        ])
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        self.sums.evaluate(self.kind)
    }

    fn size(&self) -> usize {
        std::mem::size_of_val(self)
    }
}

/// `avg(DISTINCT x)` and friends: the distinct values, summed at the end.
#[derive(Debug)]
struct DistinctAccumulator {
    kind: NumericKind,
    values: HashSet<i64>,
}

impl Accumulator for DistinctAccumulator {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        for_each_integer(&values[0], |v| {
            self.values.insert(v);
        })
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        for list in states[0].as_list::<i32>().iter().flatten() {
            for_each_integer(&list, |v| {
                self.values.insert(v);
            })?;
        }
        Ok(())
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        let values: Int64Array = self.values.iter().copied().map(Some).collect();
        let values: Vec<ScalarValue> = (0..values.len())
            .map(|i| ScalarValue::try_from_array(&values, i))
            .collect::<Result<_>>()?;
        Ok(vec![ScalarValue::List(ScalarValue::new_list_nullable(
            &values,
            &DataType::Int64,
        ))])
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        let mut sums = Sums::default();
        for v in &self.values {
            sums.add(*v, 1);
        }
        sums.evaluate(self.kind)
    }

    fn size(&self) -> usize {
        std::mem::size_of_val(self) + self.values.capacity() * std::mem::size_of::<i64>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(value: i256, rule: &str) -> String {
        let dscale = display_scale(rule, value, RESULT_SCALE).unwrap();
        let digits = value
            .wrapping_abs()
            .wrapping_div(pow10(RESULT_SCALE as u32 - u32::from(dscale)))
            .to_string();
        let d = usize::from(dscale);
        let padded = format!("{digits:0>width$}", width = d + 1);
        let (int, frac) = padded.split_at(padded.len() - d);
        let sign = if value.is_negative() { "-" } else { "" };
        if d == 0 {
            format!("{sign}{int}")
        } else {
            format!("{sign}{int}.{frac}")
        }
    }

    fn avg(values: &[i64]) -> String {
        let mut sums = Sums::default();
        values.iter().for_each(|v| sums.add(*v, 1));
        match sums.evaluate(NumericKind::Avg).unwrap() {
            ScalarValue::Decimal256(Some(v), _, _) => text(v, "avg"),
            other => panic!("{other:?}"),
        }
    }

    fn spread(kind: NumericKind, values: &[i64]) -> String {
        let mut sums = Sums::default();
        values.iter().for_each(|v| sums.add(*v, 1));
        match sums.evaluate(kind).unwrap() {
            ScalarValue::Decimal256(Some(v), _, _) => text(v, kind.display_rule()),
            ScalarValue::Decimal256(None, _, _) => "NULL".into(),
            other => panic!("{other:?}"),
        }
    }

    // Expected strings are PostgreSQL 15's output for the same aggregates.
    #[test]
    fn averages_print_as_postgresql_prints_them() {
        assert_eq!(avg(&[1, 2]), "1.5000000000000000");
        assert_eq!(avg(&[1, 3]), "2.0000000000000000");
        assert_eq!(avg(&[1, 2, 3, 4]), "2.5000000000000000");
        assert_eq!(avg(&[1, 2, 2]), "1.6666666666666667");
        assert_eq!(avg(&[0, 1, 0]), "0.33333333333333333333");
        assert_eq!(avg(&[-1, -2]), "-1.5000000000000000");
        assert_eq!(avg(&[0, 0]), "0.00000000000000000000");
        assert_eq!(avg(&[123_456_789, 0]), "61728394.500000000000");
        assert_eq!(avg(&[20_000, 30_001]), "25000.500000000000");
        assert_eq!(
            avg(&[1, 1]),
            "1.0000000000000000",
            "PostgreSQL: 1.00000000000000000000"
        );
        assert_eq!(avg(&[i64::MAX, i64::MAX - 1]), "9223372036854775807");
    }

    #[test]
    fn variances_print_as_postgresql_prints_them() {
        use NumericKind::*;
        assert_eq!(spread(VarSamp, &[10, 20, 30]), "100.0000000000000000");
        assert_eq!(spread(StddevSamp, &[10, 20, 30]), "10.0000000000000000");
        assert_eq!(spread(VarSamp, &[5, 15, 15]), "33.3333333333333333");
        assert_eq!(spread(StddevSamp, &[5, 15, 15]), "5.7735026918962576");
        assert_eq!(spread(VarSamp, &[7, 8]), "0.50000000000000000000");
        assert_eq!(spread(StddevSamp, &[7, 8]), "0.70710678118654752440");
        assert_eq!(spread(VarPop, &[7, 8]), "0.25000000000000000000");
        assert_eq!(spread(StddevPop, &[7, 8]), "0.50000000000000000000");
        assert_eq!(spread(VarSamp, &[4, 4, 4]), "0");
        assert_eq!(spread(VarSamp, &[4]), "NULL");
        assert_eq!(spread(VarPop, &[4]), "0");
        assert_eq!(
            spread(
                VarSamp,
                &[1_000_000_000_000, 2_000_000_000_000, 2_000_000_000_001]
            ),
            "333333333333666666666667"
        );
        assert_eq!(
            spread(
                StddevSamp,
                &[1_000_000_000_000, 2_000_000_000_000, 2_000_000_000_001]
            ),
            "577350269190"
        );
        assert_eq!(
            spread(VarSamp, &[i64::MAX, i64::MIN]),
            "170141183460469231713240559642174554113"
        );
        assert_eq!(
            spread(StddevSamp, &[i64::MAX, i64::MIN]),
            "13043817825332782212"
        );
    }

    proptest::proptest! {
        #[test]
        fn the_128_bit_average_equals_the_256_bit_one(
            sum in -999_999_999_999_999_999i128..1_000_000_000_000_000_000i128,
            count in 1i64..5_000_000_000,
        ) {
            let wide = divide(i256::from_i128(sum), i256::from_i128(i128::from(count))).unwrap();
            proptest::prop_assert_eq!(small_average(sum, count), Some(wide));
        }

        #[test]
        fn small_averages_agree_too(sum in -100_000i128..100_000, count in 1i64..1_000) {
            let wide = divide(i256::from_i128(sum), i256::from_i128(i128::from(count))).unwrap();
            proptest::prop_assert_eq!(small_average(sum, count), Some(wide));
        }
    }

    #[test]
    fn square_roots_are_floored() {
        for v in [0i128, 1, 2, 3, 4, 15, 16, 17, 99, 100, 10i128.pow(30) + 7] {
            let r = isqrt(i256::from_i128(v)).as_i128();
            assert!(r * r <= v && (r + 1) * (r + 1) > v, "{v}");
        }
    }
}
