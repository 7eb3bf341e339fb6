//! `json_build_object(k1, v1, k2, v2, ...)`, which SQLAlchemy's inspector
//! uses in its column queries. Returns the object as JSON text.

use datafusion::arrow::array::StringBuilder;
use datafusion::arrow::datatypes::DataType;
use datafusion::common::{exec_err, ScalarValue};
use datafusion::error::Result;
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDFImpl, Signature, Volatility,
};
use std::sync::Arc;

#[derive(Debug, PartialEq, Eq, Hash)]
pub(crate) struct JsonBuildObject {
    signature: Signature,
}

impl JsonBuildObject {
    pub(crate) fn new() -> Self {
        Self {
            signature: Signature::variadic_any(Volatility::Immutable),
        }
    }
}

impl ScalarUDFImpl for JsonBuildObject {
    fn name(&self) -> &str {
        "json_build_object"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        if !args.args.len().is_multiple_of(2) {
            return exec_err!("argument list must have even number of elements");
        }
        let rows = args.number_rows;
        let mut out = StringBuilder::new();
        for row in 0..rows {
            let mut json = String::from("{");
            for (i, pair) in args.args.chunks(2).enumerate() {
                let key = value_at(&pair[0], row)?;
                let value = value_at(&pair[1], row)?;
                if key.is_null() {
                    return exec_err!("argument {} cannot be null", 2 * i + 1);
                }
                if i > 0 {
                    json.push_str(", ");
                }
                json_string(&mut json, &key_text(&key));
                json.push_str(" : ");
                json_value(&mut json, &value);
            }
            json.push('}');
            out.append_value(json);
        }
        Ok(ColumnarValue::Array(Arc::new(out.finish())))
    }
}

fn value_at(v: &ColumnarValue, row: usize) -> Result<ScalarValue> {
    match v {
        ColumnarValue::Scalar(s) => Ok(s.clone()),
        ColumnarValue::Array(a) => ScalarValue::try_from_array(a, row),
    }
}

fn key_text(v: &ScalarValue) -> String {
    match v {
        ScalarValue::Utf8(Some(s))
        | ScalarValue::Utf8View(Some(s))
        | ScalarValue::LargeUtf8(Some(s)) => s.clone(),
        other => other.to_string(),
    }
}

fn json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

fn json_value(out: &mut String, v: &ScalarValue) {
    if v.is_null() {
        out.push_str("null");
        return;
    }
    match v {
        ScalarValue::Boolean(Some(b)) => out.push_str(if *b { "true" } else { "false" }),
        ScalarValue::Int8(_)
        | ScalarValue::Int16(_)
        | ScalarValue::Int32(_)
        | ScalarValue::Int64(_)
        | ScalarValue::UInt8(_)
        | ScalarValue::UInt16(_)
        | ScalarValue::UInt32(_)
        | ScalarValue::UInt64(_)
        | ScalarValue::Float32(_)
        | ScalarValue::Float64(_)
        | ScalarValue::Decimal128(..) => out.push_str(&v.to_string()),
        other => json_string(out, &key_text(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_and_types() {
        let mut s = String::new();
        json_string(&mut s, "a\"b\\c\n");
        assert_eq!(s, r#""a\"b\\c\n""#);
        let mut s = String::new();
        json_value(&mut s, &ScalarValue::Boolean(Some(true)));
        json_value(&mut s, &ScalarValue::Int32(None));
        json_value(&mut s, &ScalarValue::Int64(Some(-3)));
        assert_eq!(s, "truenull-3");
    }
}
