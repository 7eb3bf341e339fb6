//! Topic messages with columns carry one JSON object per message. This is
//! the one encoder (a row of Arrow arrays to a JSON object) and the one
//! decoder (a JSON object to values for Arrow builders) of that format.
//!
//! | SQL type          | JSON written               | JSON accepted                         |
//! |-------------------|----------------------------|---------------------------------------|
//! | boolean           | true / false               | true / false                          |
//! | smallint..bigint  | number                     | integral number (in range)            |
//! | real, double      | number, or "NaN"/"Infinity"| number, or those strings              |
//! | text              | string                     | string                                |
//! | bytea             | "\\x" + hex                | "\\x" + hex, or any string (its UTF-8)|
//! | date              | "YYYY-MM-DD"               | the same                              |
//! | timestamp         | "YYYY-MM-DD HH:MM:SS.ffffff" | that, ISO 8601 with T / zone, or epoch milliseconds |
//!
//! A missing member or `null` is SQL NULL; members that are not columns are ignored.

use chrono::{DateTime, NaiveDate, NaiveDateTime};
use datafusion::arrow::array::{
    Array, ArrayBuilder, ArrayRef, AsArray, BinaryBuilder, BooleanBuilder, Date32Builder,
    Float32Builder, Float64Builder, Int16Builder, Int32Builder, Int64Builder, StringBuilder,
    TimestampMicrosecondBuilder,
};
use datafusion::arrow::datatypes::{
    Date32Type, Float32Type, Float64Type, Int16Type, Int32Type, Int64Type, TimestampMicrosecondType,
};
use serde_json::{Map, Number, Value};

use crate::table::codec::{hex, unhex};
use crate::table::SqlType;

const EPOCH_DAYS_CE: i32 = 719_163;

/// One decoded value, before it goes to a builder.
#[derive(Debug, Clone, PartialEq)]
pub enum Val {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Text(String),
    Bytes(Vec<u8>),
    Date(i32),
    Micros(i64),
}

/// How a bytea value is written in JSON: `\x` and hex, as PostgreSQL prints it.
pub fn bytea_text(b: &[u8]) -> String {
    format!("\\x{}", hex(b))
}

fn float(v: f64) -> Value {
    Number::from_f64(v).map(Value::Number).unwrap_or_else(|| {
        Value::String(if v.is_nan() {
            "NaN".into()
        } else if v > 0.0 {
            "Infinity".into()
        } else {
            "-Infinity".into()
        })
    })
}

/// The JSON value of row `row` of `array`, a column of type `ty`.
pub fn to_json(ty: SqlType, array: &ArrayRef, row: usize) -> Value {
    if array.is_null(row) {
        return Value::Null;
    }
    match ty {
        SqlType::Bool => Value::Bool(array.as_boolean().value(row)),
        SqlType::Int2 => Value::from(array.as_primitive::<Int16Type>().value(row)),
        SqlType::Int4 => Value::from(array.as_primitive::<Int32Type>().value(row)),
        SqlType::Int8 => Value::from(array.as_primitive::<Int64Type>().value(row)),
        SqlType::Float4 => float(f64::from(array.as_primitive::<Float32Type>().value(row))),
        SqlType::Float8 => float(array.as_primitive::<Float64Type>().value(row)),
        SqlType::Text => Value::String(array.as_string::<i32>().value(row).to_owned()),
        SqlType::Bytea => Value::String(bytea_text(array.as_binary::<i32>().value(row))),
        SqlType::Date => {
            let days = array.as_primitive::<Date32Type>().value(row);
            match NaiveDate::from_num_days_from_ce_opt(days + EPOCH_DAYS_CE) {
                Some(d) => Value::String(d.format("%Y-%m-%d").to_string()),
                None => Value::Null,
            }
        }
        SqlType::Timestamp => {
            let us = array.as_primitive::<TimestampMicrosecondType>().value(row);
            match DateTime::from_timestamp_micros(us) {
                Some(t) => Value::String(t.naive_utc().format("%Y-%m-%d %H:%M:%S%.6f").to_string()),
                None => Value::Null,
            }
        }
    }
}

/// The text a value takes as a message key (what `KEY = column` hashes).
pub fn key_text(ty: SqlType, array: &ArrayRef, row: usize) -> Option<Vec<u8>> {
    match to_json(ty, array, row) {
        Value::Null => None,
        Value::String(s) if ty == SqlType::Bytea => {
            Some(array_bytes(array, row).unwrap_or(s.into_bytes()))
        }
        Value::String(s) => Some(s.into_bytes()),
        other => Some(other.to_string().into_bytes()),
    }
}

fn array_bytes(array: &ArrayRef, row: usize) -> Option<Vec<u8>> {
    array.as_binary_opt::<i32>().map(|a| a.value(row).to_vec())
}

/// Encodes one row (named columns) as a JSON object.
pub fn row_to_json(columns: &[(String, SqlType)], arrays: &[ArrayRef], row: usize) -> Vec<u8> {
    let mut m = Map::with_capacity(columns.len());
    for ((name, ty), a) in columns.iter().zip(arrays) {
        m.insert(name.clone(), to_json(*ty, a, row));
    }
    Value::Object(m).to_string().into_bytes()
}

fn parse_timestamp(s: &str) -> Option<i64> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.timestamp_micros());
    }
    for f in [
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M:%S%.f%#z",
    ] {
        if let Ok(t) = NaiveDateTime::parse_from_str(s, f) {
            return Some(t.and_utc().timestamp_micros());
        }
        if let Ok(t) = DateTime::parse_from_str(s, f) {
            return Some(t.timestamp_micros());
        }
    }
    NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc().timestamp_micros())
}

/// The value of JSON `v` as a column of type `ty`, or why it does not fit.
pub fn from_json(ty: SqlType, v: &Value) -> Result<Val, String> {
    if v.is_null() {
        return Ok(Val::Null);
    }
    let wrong = || format!("{v} is not a valid {}", ty.name());
    let int = |lo: i64, hi: i64| match v.as_i64() {
        Some(i) if (lo..=hi).contains(&i) => Ok(Val::Int(i)),
        Some(_) => Err(format!("{v} is out of range for {}", ty.name())),
        None => Err(wrong()),
    };
    match ty {
        SqlType::Bool => v.as_bool().map(Val::Bool).ok_or_else(wrong),
        SqlType::Int2 => int(i16::MIN.into(), i16::MAX.into()),
        SqlType::Int4 => int(i32::MIN.into(), i32::MAX.into()),
        SqlType::Int8 => int(i64::MIN, i64::MAX),
        SqlType::Float4 | SqlType::Float8 => match v {
            Value::Number(n) => n.as_f64().map(Val::Float).ok_or_else(wrong),
            Value::String(s) => match s.as_str() {
                "NaN" => Ok(Val::Float(f64::NAN)),
                "Infinity" => Ok(Val::Float(f64::INFINITY)),
                "-Infinity" => Ok(Val::Float(f64::NEG_INFINITY)),
                _ => Err(wrong()),
            },
            _ => Err(wrong()),
        },
        SqlType::Text => v
            .as_str()
            .map(|s| Val::Text(s.to_owned()))
            .ok_or_else(wrong),
        SqlType::Bytea => {
            let s = v.as_str().ok_or_else(wrong)?;
            match s.strip_prefix("\\x") {
                Some(h) => unhex(h).map(Val::Bytes).ok_or_else(wrong),
                None => Ok(Val::Bytes(s.as_bytes().to_vec())),
            }
        }
        SqlType::Date => v
            .as_str()
            .and_then(|s| NaiveDate::parse_from_str(s, "%Y-%m-%d").ok())
            .map(|d| Val::Date(d.num_days_from_ce() - EPOCH_DAYS_CE))
            .ok_or_else(wrong),
        SqlType::Timestamp => match v {
            Value::Number(n) => n
                .as_i64()
                .and_then(|ms| ms.checked_mul(1000))
                .map(Val::Micros)
                .ok_or_else(wrong),
            Value::String(s) => parse_timestamp(s).map(Val::Micros).ok_or_else(wrong),
            _ => Err(wrong()),
        },
    }
}

use chrono::Datelike;

/// Decodes a message value into one value per column, or says why it does
/// not fit (not JSON, not an object, a member of the wrong type).
pub fn decode_row(columns: &[(String, SqlType)], value: Option<&[u8]>) -> Result<Vec<Val>, String> {
    let Some(bytes) = value else {
        return Err("the message has no value".into());
    };
    let parsed: Value = serde_json::from_slice(bytes).map_err(|e| format!("not JSON: {e}"))?;
    let Value::Object(obj) = parsed else {
        return Err("the value is not a JSON object".into());
    };
    columns
        .iter()
        .map(|(name, ty)| match obj.get(name) {
            None => Ok(Val::Null),
            Some(v) => from_json(*ty, v).map_err(|e| format!("column \"{name}\": {e}")),
        })
        .collect()
}

/// Appends a decoded value to the builder of its column.
pub fn append(builder: &mut dyn ArrayBuilder, v: &Val) {
    let b = builder.as_any_mut();
    macro_rules! put {
        ($t:ty, $val:expr) => {
            if let Some(b) = b.downcast_mut::<$t>() {
                match $val {
                    Some(x) => b.append_value(x),
                    None => b.append_null(),
                }
                return;
            }
        };
    }
    let int = match v {
        Val::Int(i) => Some(*i),
        _ => None,
    };
    let fl = match v {
        Val::Float(f) => Some(*f),
        _ => None,
    };
    put!(
        BooleanBuilder,
        match v {
            Val::Bool(x) => Some(*x),
            _ => None,
        }
    );
    put!(Int16Builder, int.map(|i| i as i16));
    put!(Int32Builder, int.map(|i| i as i32));
    put!(Int64Builder, int);
    put!(Float32Builder, fl.map(|f| f as f32));
    put!(Float64Builder, fl);
    put!(
        StringBuilder,
        match v {
            Val::Text(s) => Some(s.as_str()),
            _ => None,
        }
    );
    put!(
        BinaryBuilder,
        match v {
            Val::Bytes(s) => Some(s.as_slice()),
            _ => None,
        }
    );
    put!(
        Date32Builder,
        match v {
            Val::Date(d) => Some(*d),
            _ => None,
        }
    );
    put!(
        TimestampMicrosecondBuilder,
        match v {
            Val::Micros(t) => Some(*t),
            _ => None,
        }
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::codec::{builder, finish};

    #[test]
    fn round_trip_every_type() {
        let cols: Vec<(String, SqlType)> = [
            SqlType::Bool,
            SqlType::Int2,
            SqlType::Int4,
            SqlType::Int8,
            SqlType::Float4,
            SqlType::Float8,
            SqlType::Text,
            SqlType::Bytea,
            SqlType::Date,
            SqlType::Timestamp,
        ]
        .into_iter()
        .enumerate()
        .map(|(i, t)| (format!("c{i}"), t))
        .collect();
        let json = br#"{"c0":true,"c1":-3,"c2":70000,"c3":9007199254740993,"c4":1.5,"c5":"NaN","c6":"h\u00e9","c7":"\\x00ff","c8":"2024-02-29","c9":"2024-01-02T03:04:05.123456Z","extra":1}"#;
        let vals = decode_row(&cols, Some(json)).unwrap();
        let arrays: Vec<ArrayRef> = cols
            .iter()
            .zip(&vals)
            .map(|((_, t), v)| {
                let mut b = builder(*t, 1);
                append(b.as_mut(), v);
                finish(b)
            })
            .collect();
        let again = row_to_json(&cols, &arrays, 0);
        assert_eq!(
            String::from_utf8(again.clone()).unwrap(),
            r#"{"c0":true,"c1":-3,"c2":70000,"c3":9007199254740993,"c4":1.5,"c5":"NaN","c6":"hé","c7":"\\x00ff","c8":"2024-02-29","c9":"2024-01-02 03:04:05.123456"}"#
        );
        let back = decode_row(&cols, Some(&again)).unwrap();
        // Everything but the NaN (which equals nothing) and the timestamp's format.
        assert_eq!(back[..5], vals[..5]);
        assert_eq!(back[6..], vals[6..]);
        assert!(matches!(vals[5], Val::Float(f) if f.is_nan()));
    }

    #[test]
    fn misfits_say_why() {
        let cols = vec![
            ("n".to_string(), SqlType::Int4),
            ("t".to_string(), SqlType::Timestamp),
        ];
        assert_eq!(
            decode_row(&cols, Some(b"{}")).unwrap(),
            vec![Val::Null, Val::Null]
        );
        assert_eq!(
            decode_row(&cols, Some(br#"{"t": 1700000000000}"#)).unwrap()[1],
            Val::Micros(1_700_000_000_000_000)
        );
        for (bad, why) in [
            (&b"nope"[..], "not JSON"),
            (b"[1]", "not a JSON object"),
            (
                br#"{"n": "x"}"#,
                "column \"n\": \"x\" is not a valid integer",
            ),
            (br#"{"n": 3000000000}"#, "out of range"),
            (br#"{"t": "yesterday"}"#, "not a valid timestamp"),
        ] {
            let e = decode_row(&cols, Some(bad)).unwrap_err();
            assert!(e.contains(why), "{e}");
        }
        assert!(decode_row(&cols, None).is_err());
    }
}
