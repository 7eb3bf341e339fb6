//! PostgreSQL system functions that clients call on connect and during
//! introspection, and that DataFusion and `datafusion-pg-catalog` lack.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, StringArray, StringBuilder};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::DataType;
use datafusion::common::{exec_err, ScalarValue};
use datafusion::error::Result;
use datafusion::logical_expr::{create_udf, ColumnarValue, Volatility};
use datafusion::prelude::SessionContext;

use crate::settings::SessionSettings;

/// Functions that do not depend on the session.
pub(crate) fn register_static(ctx: &SessionContext) {
    let version = crate::version_string();
    ctx.register_udf(create_udf(
        "version",
        vec![],
        DataType::Utf8,
        Volatility::Stable,
        Arc::new(move |_args: &[ColumnarValue]| {
            Ok(ColumnarValue::Scalar(ScalarValue::Utf8(Some(version.clone()))))
        }),
    ));
    // Tidebase has no sequences: serial columns do not exist.
    ctx.register_udf(create_udf(
        "pg_get_serial_sequence",
        vec![DataType::Utf8, DataType::Utf8],
        DataType::Utf8,
        Volatility::Stable,
        Arc::new(|_args: &[ColumnarValue]| Ok(ColumnarValue::Scalar(ScalarValue::Utf8(None)))),
    ));
    // No advisory locks are ever taken, so releasing all of them is a no-op.
    ctx.register_udf(create_udf(
        "pg_advisory_unlock_all",
        vec![],
        DataType::Boolean,
        Volatility::Volatile,
        Arc::new(|_args: &[ColumnarValue]| {
            Ok(ColumnarValue::Scalar(ScalarValue::Boolean(None)))
        }),
    ));
    for (name, arity) in [("obj_description", 2), ("col_description", 2)] {
        ctx.register_udf(create_udf(
            name,
            vec![DataType::Int64; arity],
            DataType::Utf8,
            Volatility::Stable,
            Arc::new(|_args: &[ColumnarValue]| {
                Ok(ColumnarValue::Scalar(ScalarValue::Utf8(None)))
            }),
        ));
    }
}

/// Functions that read or write this session's settings.
pub(crate) fn register_session(ctx: &SessionContext, settings: SessionSettings) {
    let read = settings.clone();
    ctx.register_udf(create_udf(
        "current_setting",
        vec![DataType::Utf8],
        DataType::Utf8,
        Volatility::Stable,
        Arc::new(move |args: &[ColumnarValue]| {
            map_strings(&args[0], |name| match read.get(name) {
                Ok(v) => Ok(Some(v)),
                Err(e) => exec_err!("{e}"),
            })
        }),
    ));
    let write = settings;
    ctx.register_udf(create_udf(
        "set_config",
        vec![DataType::Utf8, DataType::Utf8, DataType::Boolean],
        DataType::Utf8,
        Volatility::Volatile,
        Arc::new(move |args: &[ColumnarValue]| {
            let (ColumnarValue::Scalar(name), ColumnarValue::Scalar(value)) = (&args[0], &args[1])
            else {
                return exec_err!("set_config expects constant arguments");
            };
            let name = name.to_string();
            let value = value.to_string();
            write.set(&name, &value);
            Ok(ColumnarValue::Scalar(ScalarValue::Utf8(Some(value))))
        }),
    ));
}

/// Applies `f` to every string of a scalar or array argument.
fn map_strings(
    arg: &ColumnarValue,
    f: impl Fn(&str) -> Result<Option<String>>,
) -> Result<ColumnarValue> {
    match arg {
        ColumnarValue::Scalar(s) => match s {
            ScalarValue::Utf8(v) | ScalarValue::LargeUtf8(v) | ScalarValue::Utf8View(v) => {
                let out = match v {
                    Some(v) => f(v)?,
                    None => None,
                };
                Ok(ColumnarValue::Scalar(ScalarValue::Utf8(out)))
            }
            other => exec_err!("expected a text argument, got {}", other.data_type()),
        },
        ColumnarValue::Array(a) => {
            let a: ArrayRef = cast(a, &DataType::Utf8)?;
            let Some(strings) = a.as_any().downcast_ref::<StringArray>() else {
                return exec_err!("expected a text argument");
            };
            let mut out = StringBuilder::new();
            for i in 0..strings.len() {
                if strings.is_null(i) {
                    out.append_null();
                } else {
                    out.append_option(f(strings.value(i))?);
                }
            }
            Ok(ColumnarValue::Array(Arc::new(out.finish())))
        }
    }
}
