//! PostgreSQL's output forms for the types whose generic encoding differs:
//! PostgreSQL prints `50` for a float8 fifty, `1e+20` for a large one, a
//! timestamp without a fraction when it has none, and each numeric at its own
//! display scale. Columns are rewritten here before encoding: floats and
//! timestamps sent as text, and numerics in both formats (the binary form is
//! built here too, so no numeric is limited to 28 digits).

use std::sync::Arc;

use chrono::DateTime;
use datafusion::arrow::array::{Array, ArrayRef, AsArray, BinaryArray, RecordBatch, StringArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{
    i256, DataType, Decimal128Type, Decimal256Type, Field, Float32Type, Float64Type, Schema,
    TimeUnit, TimestampMicrosecondType,
};
use datafusion::arrow::error::ArrowError;
use pgwire::api::portal::Format;
use pgwire::api::results::{FieldFormat, FieldInfo};
use pgwire::error::PgWireResult;
use pgwire::types::format::FormatOptions;
use tidebase_catalog::numeric::{display_scale, pow10, NUMERIC_DISPLAY};

/// The field descriptions of a result: arrow-pg's, with the wide decimals
/// that arrow-pg does not know described as the numerics they are (their
/// values are encoded by [`postgres_columns`]).
pub fn pg_fields(
    schema: &Schema,
    format: &Format,
    options: Option<Arc<FormatOptions>>,
) -> PgWireResult<Vec<FieldInfo>> {
    let described = Schema::new(
        schema
            .fields()
            .iter()
            .map(|f| match f.data_type() {
                DataType::Decimal256(_, scale) => f
                    .as_ref()
                    .clone()
                    .with_data_type(DataType::Decimal128(38, (*scale).min(38))),
                _ => f.as_ref().clone(),
            })
            .collect::<Vec<_>>(),
    );
    arrow_pg::datatypes::arrow_schema_to_pg_fields(&described, format, options)
}

/// Rewrites the columns of `batch` whose encoding is PostgreSQL's own: float
/// and timestamp columns that go out as text, and numeric columns.
pub fn postgres_columns(
    batch: RecordBatch,
    fields: &[FieldInfo],
) -> Result<RecordBatch, ArrowError> {
    let schema = batch.schema();
    let format = |i: usize| fields.get(i).map(|f| f.format());
    let rewritten = |i: usize, t: &DataType| match t {
        DataType::Float32 | DataType::Float64 | DataType::Timestamp(_, _) => {
            format(i) == Some(FieldFormat::Text)
        }
        DataType::Decimal128(_, scale) | DataType::Decimal256(_, scale) => {
            *scale >= 0 && format(i).is_some()
        }
        _ => false,
    };
    if !schema
        .fields()
        .iter()
        .enumerate()
        .any(|(i, f)| rewritten(i, f.data_type()))
    {
        return Ok(batch);
    }
    let mut new_fields = Vec::with_capacity(schema.fields().len());
    let mut columns = Vec::with_capacity(schema.fields().len());
    for (i, (field, column)) in schema.fields().iter().zip(batch.columns()).enumerate() {
        if !rewritten(i, field.data_type()) {
            new_fields.push(field.as_ref().clone());
            columns.push(column.clone());
            continue;
        }
        let decimal = matches!(
            field.data_type(),
            DataType::Decimal128(..) | DataType::Decimal256(..)
        );
        let column: ArrayRef = match format(i) {
            Some(FieldFormat::Binary) if decimal => {
                Arc::new(numeric_column(field, column, numeric_binary))
            }
            _ if decimal => Arc::new(StringArray::try_from_binary(numeric_column(
                field,
                column,
                numeric_text,
            ))?),
            _ => Arc::new(text_column(column)?),
        };
        new_fields.push(Field::new(
            field.name(),
            column.data_type().clone(),
            field.is_nullable(),
        ));
        columns.push(column);
    }
    RecordBatch::try_new(Arc::new(Schema::new(new_fields)), columns)
}

/// A decimal column's values in one of PostgreSQL's numeric forms, each at
/// its display scale: the column's scale, or the per-value scale its field
/// metadata names.
fn numeric_column(
    field: &Field,
    column: &ArrayRef,
    encode: fn(i256, u8, u8) -> Vec<u8>,
) -> BinaryArray {
    let rule = field.metadata().get(NUMERIC_DISPLAY);
    let encode_at = |v: i256, scale: i8| {
        let dscale = rule
            .and_then(|r| display_scale(r, v, scale))
            .unwrap_or(scale as u8);
        encode(v, scale as u8, dscale)
    };
    match field.data_type() {
        DataType::Decimal256(_, scale) => column
            .as_primitive::<Decimal256Type>()
            .iter()
            .map(|v| v.map(|v| encode_at(v, *scale)))
            .collect(),
        DataType::Decimal128(_, scale) => column
            .as_primitive::<Decimal128Type>()
            .iter()
            .map(|v| v.map(|v| encode_at(i256::from_i128(v), *scale)))
            .collect(),
        _ => BinaryArray::new_null(column.len()),
    }
}

/// The decimal digits of `|value|` (a decimal at `scale`) down to `dscale`
/// digits after the point, split into integer and fraction digits.
fn numeric_digits(value: i256, scale: u8, dscale: u8) -> (String, String) {
    let dscale = dscale.min(scale);
    let kept = value
        .wrapping_abs()
        .wrapping_div(pow10(u32::from(scale - dscale)))
        .to_string();
    let digits = format!("{kept:0>width$}", width = usize::from(dscale) + 1);
    let (int, frac) = digits.split_at(digits.len() - usize::from(dscale));
    (int.to_string(), frac.to_string())
}

/// PostgreSQL's text form of a numeric.
pub fn numeric_text(value: i256, scale: u8, dscale: u8) -> Vec<u8> {
    let (int, frac) = numeric_digits(value, scale, dscale);
    let mut s = String::with_capacity(int.len() + frac.len() + 2);
    if value.is_negative() {
        s.push('-');
    }
    s.push_str(&int);
    if !frac.is_empty() {
        s.push('.');
        s.push_str(&frac);
    }
    s.into_bytes()
}

/// PostgreSQL's binary form of a numeric: digit count, weight, sign and
/// display scale (16 bits each), then the base-10000 digits without leading
/// or trailing zero digits.
pub fn numeric_binary(value: i256, scale: u8, dscale: u8) -> Vec<u8> {
    let (int, frac) = numeric_digits(value, scale, dscale);
    let int = int.trim_start_matches('0');
    let int_groups = int.len().div_ceil(4);
    let int = format!("{int:0>width$}", width = int_groups * 4);
    let frac = format!("{frac:0<width$}", width = frac.len().div_ceil(4) * 4);
    let all = format!("{int}{frac}");
    let mut digits: Vec<i16> = all
        .as_bytes()
        .chunks(4)
        .map(|c| c.iter().fold(0i16, |acc, d| acc * 10 + i16::from(d - b'0')))
        .collect();
    let mut weight = int_groups as i16 - 1;
    let leading = digits.iter().take_while(|d| **d == 0).count();
    digits.drain(..leading);
    weight -= leading as i16;
    while digits.last() == Some(&0) {
        digits.pop();
    }
    if digits.is_empty() {
        weight = 0;
    }
    let sign: u16 = if value.is_negative() && !digits.is_empty() {
        0x4000
    } else {
        0
    };
    let mut out = Vec::with_capacity(8 + 2 * digits.len());
    out.extend_from_slice(&(digits.len() as i16).to_be_bytes());
    out.extend_from_slice(&weight.to_be_bytes());
    out.extend_from_slice(&sign.to_be_bytes());
    out.extend_from_slice(&u16::from(dscale.min(scale)).to_be_bytes());
    for d in digits {
        out.extend_from_slice(&d.to_be_bytes());
    }
    out
}

fn text_column(column: &ArrayRef) -> Result<StringArray, ArrowError> {
    Ok(match column.data_type() {
        DataType::Float64 => column
            .as_primitive::<Float64Type>()
            .iter()
            .map(|v| v.map(postgres_float))
            .collect(),
        DataType::Float32 => column
            .as_primitive::<Float32Type>()
            .iter()
            .map(|v| v.map(|v| postgres_float(f64::from(v))))
            .collect(),
        DataType::Timestamp(_, tz) => {
            let micros = cast(column, &DataType::Timestamp(TimeUnit::Microsecond, None))?;
            let with_zone = tz.is_some();
            micros
                .as_primitive::<TimestampMicrosecondType>()
                .iter()
                .map(|v| v.map(|v| postgres_timestamp(v, with_zone)))
                .collect()
        }
        other => {
            return Err(ArrowError::InvalidArgumentError(format!(
                "no PostgreSQL text form for {other}"
            )))
        }
    })
}

/// A float as PostgreSQL prints it: shortest round-trip digits, with an
/// exponent below 1e-4 and from 1e15 up, and `NaN` / `Infinity` spelled out.
pub fn postgres_float(v: f64) -> String {
    if v.is_nan() {
        return "NaN".into();
    }
    if v.is_infinite() {
        return if v > 0.0 {
            "Infinity".into()
        } else {
            "-Infinity".into()
        };
    }
    let magnitude = v.abs();
    if v != 0.0 && !(1e-4..1e15).contains(&magnitude) {
        let s = format!("{v:e}");
        let (mantissa, exponent) = s.split_once('e').unwrap_or((&s, "0"));
        let (sign, digits) = match exponent.strip_prefix('-') {
            Some(d) => ('-', d),
            None => ('+', exponent),
        };
        format!("{mantissa}e{sign}{digits:0>2}")
    } else {
        format!("{v}")
    }
}

/// A timestamp (microseconds since the epoch, UTC) as PostgreSQL prints it.
pub fn postgres_timestamp(micros: i64, with_zone: bool) -> String {
    let Some(t) = DateTime::from_timestamp_micros(micros) else {
        return micros.to_string();
    };
    let mut s = t.format("%Y-%m-%d %H:%M:%S").to_string();
    let fraction = micros.rem_euclid(1_000_000);
    if fraction != 0 {
        let digits = format!("{fraction:06}");
        s.push('.');
        s.push_str(digits.trim_end_matches('0'));
    }
    if with_zone {
        s.push_str("+00");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_print_as_postgres_prints_them() {
        assert_eq!(postgres_float(50.0), "50");
        assert_eq!(postgres_float(47.5), "47.5");
        assert_eq!(postgres_float(0.1), "0.1");
        assert_eq!(postgres_float(-0.25), "-0.25");
        assert_eq!(postgres_float(1e20), "1e+20");
        assert_eq!(postgres_float(1.5e-5), "1.5e-05");
        assert_eq!(postgres_float(123456789012345.0), "123456789012345");
        assert_eq!(postgres_float(f64::NAN), "NaN");
        assert_eq!(postgres_float(f64::NEG_INFINITY), "-Infinity");
        assert_eq!(postgres_float(0.0), "0");
    }

    #[test]
    fn numerics_print_at_their_display_scale() {
        let text = |v, s, d| String::from_utf8(numeric_text(i256::from_i128(v), s, d)).unwrap();
        assert_eq!(text(15_000, 4, 2), "1.50");
        assert_eq!(text(-15_000, 4, 4), "-1.5000");
        assert_eq!(text(5, 4, 4), "0.0005");
        assert_eq!(text(0, 2, 0), "0");
        assert_eq!(text(1_234_567, 2, 2), "12345.67");
        // Digits past the display scale are zeros by construction.
        assert_eq!(text(1_500_000, 6, 2), "1.50");
    }

    #[test]
    fn numerics_encode_postgresql_binary() {
        // PostgreSQL's numeric_send for 12345.670 (numeric(8,3)): 3 digits,
        // weight 1, positive, dscale 3, digits 1 2345 6700.
        assert_eq!(
            numeric_binary(i256::from_i128(12_345_670), 3, 3),
            vec![0u8, 3, 0, 1, 0, 0, 0, 3, 0, 1, 0x09, 0x29, 0x1a, 0x2c]
        );
        // -0.5 at scale 4: no integer digit, weight -1, negative.
        assert_eq!(
            numeric_binary(i256::from_i128(-5_000), 4, 4),
            vec![0u8, 1, 0xff, 0xff, 0x40, 0, 0, 4, 0x13, 0x88]
        );
        // Zero keeps its display scale and has no digits.
        assert_eq!(
            numeric_binary(i256::ZERO, 20, 20),
            vec![0u8, 0, 0, 0, 0, 0, 0, 20]
        );
    }

    #[test]
    fn timestamps_drop_a_zero_fraction() {
        // 2016-05-01 10:30:00 UTC
        let base = 1_462_098_600_000_000;
        assert_eq!(postgres_timestamp(base, false), "2016-05-01 10:30:00");
        assert_eq!(
            postgres_timestamp(base + 500_000, false),
            "2016-05-01 10:30:00.5"
        );
        assert_eq!(
            postgres_timestamp(base + 123, true),
            "2016-05-01 10:30:00.000123+00"
        );
        assert_eq!(postgres_timestamp(-1, false), "1969-12-31 23:59:59.999999");
    }
}
