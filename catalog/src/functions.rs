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
            Ok(ColumnarValue::Scalar(ScalarValue::Utf8(Some(
                version.clone(),
            ))))
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
        Arc::new(|_args: &[ColumnarValue]| Ok(ColumnarValue::Scalar(ScalarValue::Boolean(None)))),
    ));
    ctx.register_udf(datafusion::logical_expr::ScalarUDF::new_from_impl(
        crate::json_build_object::JsonBuildObject::new(),
    ));
    for aggregate in crate::numeric::aggregates() {
        ctx.register_udaf(aggregate);
    }
    ctx.add_analyzer_rule(Arc::new(crate::numeric::DecimalCasts));
    // psycopg's TypeInfo.fetch looks types up with `oid = to_regtype($1)`.
    ctx.register_udf(create_udf(
        "to_regtype",
        vec![DataType::Utf8],
        DataType::Int32,
        Volatility::Stable,
        Arc::new(|args: &[ColumnarValue]| {
            let names = map_strings(&args[0], |name| {
                Ok(builtin_type_oid(name).map(|o| o.to_string()))
            })?;
            Ok(match names {
                ColumnarValue::Scalar(s) => ColumnarValue::Scalar(s.cast_to(&DataType::Int32)?),
                ColumnarValue::Array(a) => ColumnarValue::Array(cast(&a, &DataType::Int32)?),
            })
        }),
    ));
    // Every object is in the search path's single schema or pg_catalog.
    for name in [
        "pg_collation_is_visible",
        "pg_type_is_visible",
        "pg_function_is_visible",
    ] {
        ctx.register_udf(create_udf(
            name,
            vec![DataType::Int64],
            DataType::Boolean,
            Volatility::Stable,
            Arc::new(|_args: &[ColumnarValue]| {
                Ok(ColumnarValue::Scalar(ScalarValue::Boolean(Some(true))))
            }),
        ));
    }
    for (name, arity) in [("obj_description", 2), ("col_description", 2)] {
        ctx.register_udf(create_udf(
            name,
            vec![DataType::Int64; arity],
            DataType::Utf8,
            Volatility::Stable,
            Arc::new(|_args: &[ColumnarValue]| Ok(ColumnarValue::Scalar(ScalarValue::Utf8(None)))),
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

/// The OID of a built-in type by any of its SQL names, as `to_regtype`
/// resolves it; `None` for types Tidebase does not have (hstore, ...).
fn builtin_type_oid(name: &str) -> Option<i32> {
    let name = name
        .trim()
        .trim_start_matches("pg_catalog.")
        .to_ascii_lowercase();
    Some(match name.as_str() {
        "bool" | "boolean" => 16,
        "bytea" => 17,
        "char" | "\"char\"" => 18,
        "name" => 19,
        "int8" | "bigint" => 20,
        "int2" | "smallint" => 21,
        "int4" | "int" | "integer" => 23,
        "text" => 25,
        "oid" => 26,
        "json" => 114,
        "float4" | "real" => 700,
        "float8" | "double precision" => 701,
        "varchar" | "character varying" => 1043,
        "date" => 1082,
        "time" | "time without time zone" => 1083,
        "timestamp" | "timestamp without time zone" => 1114,
        "timestamptz" | "timestamp with time zone" => 1184,
        "interval" => 1186,
        "numeric" | "decimal" => 1700,
        "uuid" => 2950,
        "jsonb" => 3802,
        _ => return None,
    })
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
