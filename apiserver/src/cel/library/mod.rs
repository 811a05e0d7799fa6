//! What Kubernetes adds to standard CEL (k8s.io/apiserver/pkg/cel/library), one file per
//! library. Most functions are registered on the root context (their names are not CEL
//! overloads elsewhere); those whose names the standard environment already declares are
//! overloads on the environment, for their own receiver types.

mod format;
mod lists;
mod net;
pub mod quantity;
pub mod regex;
mod url;

use cel::common::types::CelString;
use cel::common::types::Type;
use cel::common::value::CowVal;
use cel::{Context, DeclarationError, Env, ExecutionError};

/// `string(ip)` and `string(cidr)`.
fn to_string<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    let v = args
        .first()
        .ok_or_else(ExecutionError::missing_argument_or_target)?;
    let v = cel::Value::try_from(&**v)?;
    net::to_string(&v)
        .map(|s| CowVal::owned(CelString::from(s)))
        .ok_or_else(|| ExecutionError::function_error("string", "expected an IP or a CIDR"))
}

/// Overloads declared on the environment.
pub fn overloads(env: &mut Env) -> Result<(), DeclarationError> {
    lists::overloads(env)?;
    regex::macros(env)?;
    env.add_overload(
        "string",
        "string(net.IP)",
        vec![Type::new_opaque_type("net.IP")],
        to_string,
    )?;
    env.add_overload(
        "string",
        "string(net.CIDR)",
        vec![Type::new_opaque_type("net.CIDR")],
        to_string,
    )
}

/// Functions registered on the root context.
pub fn functions(ctx: &mut Context<'static, 'static>) {
    quantity::register(ctx);
    url::register(ctx);
    net::register(ctx);
    regex::register(ctx);
    lists::register(ctx);
    format::register(ctx);
}
