//! Kubernetes' list and set libraries (k8s.io/apiserver/pkg/cel/library/lists.go, sets.go):
//! `isSorted`, `sum`, `min`, `max`, `indexOf`, `lastIndexOf` on lists, and
//! `sets.contains`, `sets.equivalent`, `sets.intersects`.

use std::sync::Arc;

use cel::common::types::{CelInt, DYN_TYPE, LIST_TYPE};
use cel::common::value::CowVal;
use cel::extractors::This;
use cel::{Context, DeclarationError, Env, ExecutionError, FunctionContext, ResolveResult, Value};

fn list_arg<'b, 'v>(args: &[CowVal<'b, 'v>], i: usize) -> Result<Value, ExecutionError> {
    let v = args
        .get(i)
        .ok_or_else(ExecutionError::missing_argument_or_target)?;
    Value::try_from(&**v)
}

fn index_of<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    position(args, false)
}

fn last_index_of<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> Result<CowVal<'b, 'v>, ExecutionError> {
    position(args, true)
}

fn position<'b, 'v>(
    args: Vec<CowVal<'b, 'v>>,
    last: bool,
) -> Result<CowVal<'b, 'v>, ExecutionError> {
    let Value::List(items) = list_arg(&args, 0)? else {
        let name = if last { "lastIndexOf" } else { "indexOf" };
        return Err(ExecutionError::function_error(
            name,
            "receiver is not a list",
        ));
    };
    let needle = list_arg(&args, 1)?;
    let found = if last {
        items.iter().rposition(|v| *v == needle)
    } else {
        items.iter().position(|v| *v == needle)
    };
    Ok(CowVal::owned(CelInt::from(found.map_or(-1, |i| i as i64))))
}

/// Overloads that share a name with the strings extension's (`indexOf`), declared on the
/// environment for list receivers.
pub fn overloads(env: &mut Env) -> Result<(), DeclarationError> {
    env.add_member_overload(
        "indexOf",
        "list.indexOf(dyn)",
        LIST_TYPE,
        vec![DYN_TYPE],
        index_of,
    )?;
    env.add_member_overload(
        "lastIndexOf",
        "list.lastIndexOf(dyn)",
        LIST_TYPE,
        vec![DYN_TYPE],
        last_index_of,
    )
}

fn items(ftx: &FunctionContext, v: &Value) -> Result<Arc<Vec<Value>>, ExecutionError> {
    match v {
        Value::List(l) => Ok(l.clone()),
        _ => Err(ftx.error("expected a list")),
    }
}

fn extreme(ftx: &FunctionContext, v: &Value, want: std::cmp::Ordering) -> ResolveResult {
    let list = items(ftx, v)?;
    let mut best = list
        .first()
        .ok_or_else(|| ftx.error(format!("{}() called on an empty list", ftx.name)))?;
    for x in list.iter().skip(1) {
        match x.partial_cmp(best) {
            Some(o) if o == want => best = x,
            Some(_) => {}
            None => return Err(ftx.error("list elements are not comparable")),
        }
    }
    Ok(best.clone())
}

fn contains_all(a: &[Value], b: &[Value]) -> bool {
    b.iter().all(|x| a.contains(x))
}

pub fn register(ctx: &mut Context<'static, 'static>) {
    let _ = ctx.add_function(
        "isSorted",
        |ftx: &FunctionContext, This(v): This<Value>| -> ResolveResult {
            let list = items(ftx, &v)?;
            for w in list.windows(2) {
                match w[0].partial_cmp(&w[1]) {
                    Some(std::cmp::Ordering::Greater) => return Ok(Value::Bool(false)),
                    Some(_) => {}
                    None => return Err(ftx.error("list elements are not comparable")),
                }
            }
            Ok(Value::Bool(true))
        },
    );
    let _ = ctx.add_function(
        "sum",
        |ftx: &FunctionContext, This(v): This<Value>| -> ResolveResult {
            let list = items(ftx, &v)?;
            let mut total = match list.first() {
                Some(Value::Float(_)) => Value::Float(0.0),
                Some(Value::UInt(_)) => Value::UInt(0),
                Some(Value::Duration(_)) => Value::Duration(Default::default()),
                _ => Value::Int(0),
            };
            for x in list.iter() {
                total = (total + x.clone())?;
            }
            Ok(total)
        },
    );
    let _ = ctx.add_function(
        "min",
        |ftx: &FunctionContext, This(v): This<Value>| -> ResolveResult {
            extreme(ftx, &v, std::cmp::Ordering::Less)
        },
    );
    let _ = ctx.add_function(
        "max",
        |ftx: &FunctionContext, This(v): This<Value>| -> ResolveResult {
            extreme(ftx, &v, std::cmp::Ordering::Greater)
        },
    );
    let _ = ctx.add_function(
        "sets.contains",
        |ftx: &FunctionContext, a: Value, b: Value| -> ResolveResult {
            Ok(Value::Bool(contains_all(
                &items(ftx, &a)?,
                &items(ftx, &b)?,
            )))
        },
    );
    let _ = ctx.add_function(
        "sets.equivalent",
        |ftx: &FunctionContext, a: Value, b: Value| -> ResolveResult {
            let (a, b) = (items(ftx, &a)?, items(ftx, &b)?);
            Ok(Value::Bool(contains_all(&a, &b) && contains_all(&b, &a)))
        },
    );
    let _ = ctx.add_function(
        "sets.intersects",
        |ftx: &FunctionContext, a: Value, b: Value| -> ResolveResult {
            let (a, b) = (items(ftx, &a)?, items(ftx, &b)?);
            Ok(Value::Bool(b.iter().any(|x| a.contains(x))))
        },
    );
}
