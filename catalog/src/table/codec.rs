//! Bytes of SQL values: the row-key codec (byte order equals SQL order) and
//! the cell-value codec. One encoder and one decoder for each.

use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayBuilder, ArrayRef, AsArray, BinaryBuilder, BooleanBuilder, Date32Builder,
    Float32Builder, Float64Builder, Int16Builder, Int32Builder, Int64Builder, StringBuilder,
    TimestampMicrosecondBuilder,
};
use datafusion::arrow::datatypes::{
    DataType, Date32Type, Float32Type, Float64Type, Int16Type, Int32Type, Int64Type, TimeUnit,
    TimestampMicrosecondType,
};

use super::SqlType;
use crate::CatalogError;

pub use tidebase_storage::{hex, unhex};

fn corrupt(what: &str) -> CatalogError {
    CatalogError::Corrupt(what.to_string())
}

/// Order-preserving bits of a float: flip all bits of negatives, the sign
/// bit of positives. `-0.0` is stored as `0.0` (they are equal in SQL) and
/// every NaN as one NaN, which sorts after every number as in PostgreSQL.
fn float_key(v: f64) -> u64 {
    let v = if v == 0.0 {
        0.0
    } else if v.is_nan() {
        f64::NAN
    } else {
        v
    };
    let bits = v.to_bits();
    if bits >> 63 == 1 {
        !bits
    } else {
        bits | (1 << 63)
    }
}

fn float_from_key(k: u64) -> f64 {
    let bits = if k >> 63 == 1 { k & !(1 << 63) } else { !k };
    f64::from_bits(bits)
}

fn float32_key(v: f32) -> u32 {
    let v = if v == 0.0 {
        0.0
    } else if v.is_nan() {
        f32::NAN
    } else {
        v
    };
    let bits = v.to_bits();
    if bits >> 31 == 1 {
        !bits
    } else {
        bits | (1 << 31)
    }
}

fn float32_from_key(k: u32) -> f32 {
    let bits = if k >> 31 == 1 { k & !(1 << 31) } else { !k };
    f32::from_bits(bits)
}

/// Variable-length bytes in a key: `0x00` becomes `0x00 0xFF`, and
/// `0x00 0x01` ends the value, so a shorter value sorts first and the next
/// key column starts after an unambiguous boundary.
fn put_escaped(out: &mut Vec<u8>, b: &[u8]) {
    for &x in b {
        out.push(x);
        if x == 0 {
            out.push(0xFF);
        }
    }
    out.extend_from_slice(&[0, 1]);
}

fn take_escaped(buf: &[u8], pos: &mut usize) -> Result<Vec<u8>, CatalogError> {
    let mut out = Vec::new();
    loop {
        let x = *buf
            .get(*pos)
            .ok_or_else(|| corrupt("unterminated key bytes"))?;
        *pos += 1;
        if x != 0 {
            out.push(x);
            continue;
        }
        let next = *buf
            .get(*pos)
            .ok_or_else(|| corrupt("unterminated key bytes"))?;
        *pos += 1;
        match next {
            0xFF => out.push(0),
            1 => return Ok(out),
            _ => return Err(corrupt("bad escape in key bytes")),
        }
    }
}

fn take<const N: usize>(buf: &[u8], pos: &mut usize) -> Result<[u8; N], CatalogError> {
    let b = buf
        .get(*pos..*pos + N)
        .ok_or_else(|| corrupt("key too short"))?;
    *pos += N;
    let mut a = [0u8; N];
    a.copy_from_slice(b);
    Ok(a)
}

/// Appends the key encoding of row `row` of `array` (of type `ty`).
/// Returns false when the value is NULL (keys have no NULLs).
pub fn encode_key_value(out: &mut Vec<u8>, ty: SqlType, array: &ArrayRef, row: usize) -> bool {
    if array.is_null(row) {
        return false;
    }
    match ty {
        SqlType::Bool => out.push(u8::from(array.as_boolean().value(row))),
        SqlType::Int2 => {
            let v = array.as_primitive::<Int16Type>().value(row);
            out.extend_from_slice(&((v as u16) ^ (1 << 15)).to_be_bytes());
        }
        SqlType::Int4 => {
            let v = array.as_primitive::<Int32Type>().value(row);
            out.extend_from_slice(&((v as u32) ^ (1 << 31)).to_be_bytes());
        }
        SqlType::Date => {
            let v = array.as_primitive::<Date32Type>().value(row);
            out.extend_from_slice(&((v as u32) ^ (1 << 31)).to_be_bytes());
        }
        SqlType::Int8 => {
            let v = array.as_primitive::<Int64Type>().value(row);
            out.extend_from_slice(&((v as u64) ^ (1 << 63)).to_be_bytes());
        }
        SqlType::Timestamp => {
            let v = array.as_primitive::<TimestampMicrosecondType>().value(row);
            out.extend_from_slice(&((v as u64) ^ (1 << 63)).to_be_bytes());
        }
        SqlType::Float4 => {
            let v = array.as_primitive::<Float32Type>().value(row);
            out.extend_from_slice(&float32_key(v).to_be_bytes());
        }
        SqlType::Float8 => {
            let v = array.as_primitive::<Float64Type>().value(row);
            out.extend_from_slice(&float_key(v).to_be_bytes());
        }
        SqlType::Text => put_escaped(out, array.as_string::<i32>().value(row).as_bytes()),
        SqlType::Bytea => put_escaped(out, array.as_binary::<i32>().value(row)),
    }
    true
}

/// Where the first `types.len()` columns of the encoded key `key` end:
/// the length of that prefix, or of the whole key when it ends at a column
/// boundary before them. `None` when the key ends inside a column or is
/// not a valid encoding. Every key extending the returned prefix shares
/// those columns' values, and every other key sorts wholly before or
/// after them.
pub fn key_prefix_len(key: &[u8], types: &[SqlType]) -> Option<usize> {
    let mut pos = 0;
    for &ty in types {
        if pos == key.len() {
            break;
        }
        skip_key_value(key, &mut pos, ty).ok()?;
    }
    Some(pos)
}

/// Moves `pos` past one key column of type `ty` without decoding it.
pub fn skip_key_value(buf: &[u8], pos: &mut usize, ty: SqlType) -> Result<(), CatalogError> {
    let width = match ty {
        SqlType::Bool => 1,
        SqlType::Int2 => 2,
        SqlType::Int4 | SqlType::Date | SqlType::Float4 => 4,
        SqlType::Int8 | SqlType::Timestamp | SqlType::Float8 => 8,
        SqlType::Text | SqlType::Bytea => return take_escaped(buf, pos).map(drop),
    };
    if *pos + width > buf.len() {
        return Err(corrupt("key too short"));
    }
    *pos += width;
    Ok(())
}

/// Decodes one key column at `pos` into `builder` (made by [`builder`]).
pub fn decode_key_value(
    buf: &[u8],
    pos: &mut usize,
    ty: SqlType,
    builder: &mut dyn ArrayBuilder,
) -> Result<(), CatalogError> {
    decode_key_values(std::iter::once((buf, pos)), ty, builder)
}

/// Decodes one key column of many keys, each at its own position (which
/// moves past the column), into `builder`, looking up its type once.
pub fn decode_key_values<'a, 'p>(
    keys: impl Iterator<Item = (&'a [u8], &'p mut usize)>,
    ty: SqlType,
    builder: &mut dyn ArrayBuilder,
) -> Result<(), CatalogError> {
    let b = builder.as_any_mut();
    let wrong = || corrupt("builder does not match the column type");
    // Fixed-width values are decoded into a vector, then appended at once.
    macro_rules! put {
        ($builder:ty, $decode:expr) => {{
            let bld = b.downcast_mut::<$builder>().ok_or_else(wrong)?;
            let mut out = Vec::with_capacity(keys.size_hint().0);
            for (buf, pos) in keys {
                out.push($decode(buf, pos)?);
            }
            bld.append_slice(&out);
        }};
    }
    macro_rules! put_each {
        ($builder:ty, $decode:expr) => {{
            let bld = b.downcast_mut::<$builder>().ok_or_else(wrong)?;
            for (buf, pos) in keys {
                bld.append_value($decode(buf, pos)?);
            }
        }};
    }
    match ty {
        SqlType::Bool => put!(BooleanBuilder, |buf, pos| take::<1>(buf, pos)
            .map(|[v]| v != 0)),
        SqlType::Int2 => put!(Int16Builder, |buf, pos| take(buf, pos)
            .map(|v| (u16::from_be_bytes(v) ^ (1 << 15)) as i16)),
        SqlType::Int4 => put!(Int32Builder, |buf, pos| take(buf, pos)
            .map(|v| (u32::from_be_bytes(v) ^ (1 << 31)) as i32)),
        SqlType::Date => put!(Date32Builder, |buf, pos| take(buf, pos)
            .map(|v| (u32::from_be_bytes(v) ^ (1 << 31)) as i32)),
        SqlType::Int8 => put!(Int64Builder, |buf, pos| take(buf, pos)
            .map(|v| (u64::from_be_bytes(v) ^ (1 << 63)) as i64)),
        SqlType::Timestamp => put!(TimestampMicrosecondBuilder, |buf, pos| take(buf, pos)
            .map(|v| (u64::from_be_bytes(v) ^ (1 << 63)) as i64)),
        SqlType::Float4 => put!(Float32Builder, |buf, pos| take(buf, pos)
            .map(|v| float32_from_key(u32::from_be_bytes(v)))),
        SqlType::Float8 => put!(Float64Builder, |buf, pos| take(buf, pos)
            .map(|v| float_from_key(u64::from_be_bytes(v)))),
        SqlType::Text => put_each!(StringBuilder, |buf, pos| take_escaped(buf, pos)
            .and_then(|v| String::from_utf8(v).map_err(|_| corrupt("key text is not UTF-8")))),
        SqlType::Bytea => put_each!(BinaryBuilder, take_escaped),
    }
    Ok(())
}

/// Appends the cell-value encoding of row `row` of `array`: fixed-width
/// little-endian numbers, one byte for bool, raw UTF-8 or bytes. `None` for
/// NULL (stored as a delete marker, read back as a missing cell).
pub fn encode_value(ty: SqlType, array: &ArrayRef, row: usize) -> Option<Vec<u8>> {
    if array.is_null(row) {
        return None;
    }
    Some(match ty {
        SqlType::Bool => vec![u8::from(array.as_boolean().value(row))],
        SqlType::Int2 => array
            .as_primitive::<Int16Type>()
            .value(row)
            .to_le_bytes()
            .to_vec(),
        SqlType::Int4 => array
            .as_primitive::<Int32Type>()
            .value(row)
            .to_le_bytes()
            .to_vec(),
        SqlType::Date => array
            .as_primitive::<Date32Type>()
            .value(row)
            .to_le_bytes()
            .to_vec(),
        SqlType::Int8 => array
            .as_primitive::<Int64Type>()
            .value(row)
            .to_le_bytes()
            .to_vec(),
        SqlType::Timestamp => array
            .as_primitive::<TimestampMicrosecondType>()
            .value(row)
            .to_le_bytes()
            .to_vec(),
        SqlType::Float4 => array
            .as_primitive::<Float32Type>()
            .value(row)
            .to_le_bytes()
            .to_vec(),
        SqlType::Float8 => array
            .as_primitive::<Float64Type>()
            .value(row)
            .to_le_bytes()
            .to_vec(),
        SqlType::Text => array.as_string::<i32>().value(row).as_bytes().to_vec(),
        SqlType::Bytea => array.as_binary::<i32>().value(row).to_vec(),
    })
}

fn fixed<const N: usize>(v: &[u8]) -> Result<[u8; N], CatalogError> {
    v.try_into()
        .map_err(|_| corrupt("cell value has the wrong length"))
}

/// Appends a decoded cell value (or NULL for `None`) to `builder`.
pub fn decode_value(
    ty: SqlType,
    value: Option<&[u8]>,
    builder: &mut dyn ArrayBuilder,
) -> Result<(), CatalogError> {
    decode_values(ty, std::iter::once(value), builder)
}

/// Appends decoded cell values (NULL for `None`) to `builder`, looking up
/// its type once.
pub fn decode_values<'a>(
    ty: SqlType,
    values: impl Iterator<Item = Option<&'a [u8]>>,
    builder: &mut dyn ArrayBuilder,
) -> Result<(), CatalogError> {
    let b = builder.as_any_mut();
    let wrong = || corrupt("builder does not match the column type");
    // Fixed-width values are decoded into a vector (and validity flags
    // from the first NULL on), then appended at once.
    macro_rules! put {
        ($builder:ty, $decode:expr) => {{
            let bld = b.downcast_mut::<$builder>().ok_or_else(wrong)?;
            let mut out = Vec::with_capacity(values.size_hint().0);
            let mut valid: Vec<bool> = Vec::new();
            for value in values {
                match value {
                    Some(v) => {
                        out.push($decode(v)?);
                        if !valid.is_empty() {
                            valid.push(true);
                        }
                    }
                    None => {
                        valid.resize(out.len(), true);
                        valid.push(false);
                        out.push(Default::default());
                    }
                }
            }
            if valid.is_empty() {
                bld.append_slice(&out);
            } else {
                bld.append_values(&out, &valid);
            }
        }};
    }
    macro_rules! put_each {
        ($builder:ty, $decode:expr) => {{
            let bld = b.downcast_mut::<$builder>().ok_or_else(wrong)?;
            for value in values {
                match value {
                    None => bld.append_null(),
                    Some(v) => bld.append_value($decode(v)?),
                }
            }
        }};
    }
    match ty {
        SqlType::Bool => put_each!(BooleanBuilder, |v| fixed::<1>(v).map(|[b]| b != 0)),
        SqlType::Int2 => put!(Int16Builder, |v| fixed(v).map(i16::from_le_bytes)),
        SqlType::Int4 => put!(Int32Builder, |v| fixed(v).map(i32::from_le_bytes)),
        SqlType::Date => put!(Date32Builder, |v| fixed(v).map(i32::from_le_bytes)),
        SqlType::Int8 => put!(Int64Builder, |v| fixed(v).map(i64::from_le_bytes)),
        SqlType::Timestamp => put!(TimestampMicrosecondBuilder, |v| fixed(v)
            .map(i64::from_le_bytes)),
        SqlType::Float4 => put!(Float32Builder, |v| fixed(v).map(f32::from_le_bytes)),
        SqlType::Float8 => put!(Float64Builder, |v| fixed(v).map(f64::from_le_bytes)),
        SqlType::Text => put_each!(StringBuilder, |v| std::str::from_utf8(v)
            .map_err(|_| corrupt("text value is not UTF-8"))),
        SqlType::Bytea => put_each!(BinaryBuilder, Ok::<_, CatalogError>),
    }
    Ok(())
}

/// A value as PostgreSQL prints it, for `cells()`.
pub fn value_text(ty: SqlType, value: &[u8]) -> Result<String, CatalogError> {
    let mut b = builder(ty, 1);
    decode_value(ty, Some(value), b.as_mut())?;
    let array = b.finish();
    datafusion::arrow::util::display::array_value_to_string(&array, 0)
        .map_err(|e| corrupt(&e.to_string()))
}

/// An empty Arrow builder for a column of type `ty`.
pub fn builder(ty: SqlType, capacity: usize) -> Box<dyn ArrayBuilder> {
    match ty {
        SqlType::Bool => Box::new(BooleanBuilder::with_capacity(capacity)),
        SqlType::Int2 => Box::new(Int16Builder::with_capacity(capacity)),
        SqlType::Int4 => Box::new(Int32Builder::with_capacity(capacity)),
        SqlType::Int8 => Box::new(Int64Builder::with_capacity(capacity)),
        SqlType::Float4 => Box::new(Float32Builder::with_capacity(capacity)),
        SqlType::Float8 => Box::new(Float64Builder::with_capacity(capacity)),
        SqlType::Date => Box::new(Date32Builder::with_capacity(capacity)),
        SqlType::Timestamp => Box::new(TimestampMicrosecondBuilder::with_capacity(capacity)),
        SqlType::Text => Box::new(StringBuilder::with_capacity(capacity, capacity * 8)),
        SqlType::Bytea => Box::new(BinaryBuilder::with_capacity(capacity, capacity * 8)),
    }
}

/// The Arrow type of a column of type `ty`.
pub fn arrow_type(ty: SqlType) -> DataType {
    match ty {
        SqlType::Bool => DataType::Boolean,
        SqlType::Int2 => DataType::Int16,
        SqlType::Int4 => DataType::Int32,
        SqlType::Int8 => DataType::Int64,
        SqlType::Float4 => DataType::Float32,
        SqlType::Float8 => DataType::Float64,
        SqlType::Date => DataType::Date32,
        SqlType::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, None),
        SqlType::Text => DataType::Utf8,
        SqlType::Bytea => DataType::Binary,
    }
}

/// A finished builder as an array.
pub fn finish(mut b: Box<dyn ArrayBuilder>) -> ArrayRef {
    Arc::new(b.finish()) as ArrayRef
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Float64Array, Int64Array, StringArray};
    use proptest::prelude::*;

    fn key_of(ty: SqlType, a: &ArrayRef, i: usize) -> Vec<u8> {
        let mut k = Vec::new();
        assert!(encode_key_value(&mut k, ty, a, i));
        k
    }

    proptest! {
        #[test]
        fn int8_keys_sort_like_numbers(a in any::<i64>(), b in any::<i64>()) {
            let arr: ArrayRef = Arc::new(Int64Array::from(vec![a, b]));
            prop_assert_eq!(a.cmp(&b), key_of(SqlType::Int8, &arr, 0).cmp(&key_of(SqlType::Int8, &arr, 1)));
        }

        #[test]
        fn float_keys_sort_like_numbers(a in any::<f64>(), b in any::<f64>()) {
            prop_assume!(!a.is_nan() && !b.is_nan());
            let arr: ArrayRef = Arc::new(Float64Array::from(vec![a, b]));
            let want = a.partial_cmp(&b).unwrap();
            prop_assert_eq!(want, key_of(SqlType::Float8, &arr, 0).cmp(&key_of(SqlType::Float8, &arr, 1)));
        }

        #[test]
        fn composite_text_keys_sort_like_tuples(
            a in ("[a\\x00b]{0,4}", any::<i64>()),
            b in ("[a\\x00b]{0,4}", any::<i64>()),
        ) {
            let texts: ArrayRef = Arc::new(StringArray::from(vec![a.0.clone(), b.0.clone()]));
            let ints: ArrayRef = Arc::new(Int64Array::from(vec![a.1, b.1]));
            let key = |i| {
                let mut k = key_of(SqlType::Text, &texts, i);
                k.extend(key_of(SqlType::Int8, &ints, i));
                k
            };
            prop_assert_eq!(a.cmp(&b), key(0).cmp(&key(1)));
            // And it decodes back.
            let k = key(0);
            let mut pos = 0;
            let mut t = builder(SqlType::Text, 1);
            let mut n = builder(SqlType::Int8, 1);
            decode_key_value(&k, &mut pos, SqlType::Text, t.as_mut()).unwrap();
            decode_key_value(&k, &mut pos, SqlType::Int8, n.as_mut()).unwrap();
            prop_assert_eq!(pos, k.len());
            let t = finish(t);
            prop_assert_eq!(t.as_string::<i32>().value(0), a.0.as_str());
        }

        #[test]
        fn a_key_prefix_ends_where_its_columns_end(
            text in "[a\\x00b]{0,4}", n in any::<i64>(), cut in 0usize..40,
        ) {
            let texts: ArrayRef = Arc::new(StringArray::from(vec![text.clone()]));
            let ints: ArrayRef = Arc::new(Int64Array::from(vec![n]));
            let first = key_of(SqlType::Text, &texts, 0);
            let mut key = first.clone();
            key.extend(key_of(SqlType::Int8, &ints, 0));
            let types = [SqlType::Text, SqlType::Int8];
            prop_assert_eq!(key_prefix_len(&key, &types[..1]), Some(first.len()));
            prop_assert_eq!(key_prefix_len(&key, &types), Some(key.len()));
            // A key cut short: at a column boundary it is its own prefix;
            // inside a column there is none.
            let short = &key[..cut.min(key.len())];
            let at_boundary = [0, first.len(), key.len()].contains(&short.len());
            let want = at_boundary.then_some(short.len());
            prop_assert_eq!(key_prefix_len(short, &types), want);
        }

        #[test]
        fn garbage_keys_and_values_are_errors_not_panics(bytes in proptest::collection::vec(any::<u8>(), 0..24)) {
            for ty in [SqlType::Bool, SqlType::Int2, SqlType::Int4, SqlType::Int8, SqlType::Float4,
                       SqlType::Float8, SqlType::Date, SqlType::Timestamp, SqlType::Text, SqlType::Bytea] {
                let mut pos = 0;
                let mut b = builder(ty, 1);
                let _ = decode_key_value(&bytes, &mut pos, ty, b.as_mut());
                let mut b = builder(ty, 1);
                let _ = decode_value(ty, Some(&bytes), b.as_mut());
            }
        }
    }

    #[test]
    fn negative_zero_and_nan_keys() {
        let arr: ArrayRef = Arc::new(Float64Array::from(vec![-0.0, 0.0, f64::NAN, f64::INFINITY]));
        assert_eq!(
            key_of(SqlType::Float8, &arr, 0),
            key_of(SqlType::Float8, &arr, 1)
        );
        assert!(key_of(SqlType::Float8, &arr, 2) > key_of(SqlType::Float8, &arr, 3));
    }
}
