//! PostgreSQL's text output for the types whose generic encoding differs:
//! PostgreSQL prints `50` for a float8 fifty, `1e+20` for a large one, and a
//! timestamp without a fraction when it has none. Columns sent in text format
//! are rewritten here before encoding; binary columns are left alone.

use std::sync::Arc;

use chrono::DateTime;
use datafusion::arrow::array::{Array, ArrayRef, AsArray, RecordBatch, StringArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{
    DataType, Field, Float32Type, Float64Type, Schema, TimeUnit, TimestampMicrosecondType,
};
use datafusion::arrow::error::ArrowError;
use pgwire::api::results::{FieldFormat, FieldInfo};

/// Rewrites the float and timestamp columns of `batch` that go out as text.
pub fn postgres_text_columns(
    batch: RecordBatch,
    fields: &[FieldInfo],
) -> Result<RecordBatch, ArrowError> {
    let schema = batch.schema();
    let is_text = |i: usize| {
        fields
            .get(i)
            .is_some_and(|f| f.format() == FieldFormat::Text)
    };
    let rewritten = |t: &DataType| {
        matches!(
            t,
            DataType::Float32 | DataType::Float64 | DataType::Timestamp(_, _)
        )
    };
    if !schema
        .fields()
        .iter()
        .enumerate()
        .any(|(i, f)| is_text(i) && rewritten(f.data_type()))
    {
        return Ok(batch);
    }
    let mut new_fields = Vec::with_capacity(schema.fields().len());
    let mut columns = Vec::with_capacity(schema.fields().len());
    for (i, (field, column)) in schema.fields().iter().zip(batch.columns()).enumerate() {
        if is_text(i) && rewritten(field.data_type()) {
            new_fields.push(Field::new(
                field.name(),
                DataType::Utf8,
                field.is_nullable(),
            ));
            columns.push(Arc::new(text_column(column)?) as ArrayRef);
        } else {
            new_fields.push(field.as_ref().clone());
            columns.push(column.clone());
        }
    }
    RecordBatch::try_new(Arc::new(Schema::new(new_fields)), columns)
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
