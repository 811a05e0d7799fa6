//! Kubernetes' quantity library (k8s.io/apiserver/pkg/cel/library/quantity.go):
//! `quantity("1.5Gi")`, `isQuantity`, and on a quantity `sign`, `isInteger`, `asInteger`,
//! `asApproximateFloat`, `add`, `sub`, `isGreaterThan`, `isLessThan`, `compareTo`.
//!
//! A quantity is held exactly as nano-units in an `i128` (Kubernetes' smallest suffix is
//! `n`; `1E` × 10⁹ still fits), so `quantity("1Gi") == quantity("1073741824")`.

use std::sync::Arc;

use cel::extractors::This;
use cel::{Context, ExecutionError, FunctionContext, ResolveResult, Value};

const NANO: i128 = 1_000_000_000;

#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub struct Quantity(pub i128);

impl cel::objects::Opaque for Quantity {
    fn runtime_type_name(&self) -> &str {
        "kubernetes.Quantity"
    }
}

/// Parses a quantity as Kubernetes writes them: `[+-]digits[.digits][suffix]`, the suffix
/// one of `n u m k M G T P E`, `Ki Mi Gi Ti Pi Ei`, or an exponent `e3`/`E-2`. Digits below
/// a nano are rounded up, as Kubernetes rounds.
pub fn parse(s: &str) -> Option<Quantity> {
    let (negative, rest) = match s.as_bytes().first()? {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(rest.len());
    let (number, suffix) = rest.split_at(end);
    let (whole, frac) = number.split_once('.').unwrap_or((number, ""));
    if (whole.is_empty() && frac.is_empty()) || frac.contains('.') {
        return None;
    }
    // The number as an integer of digits and a decimal exponent.
    let digits = format!("{whole}{frac}");
    let digits = digits.trim_start_matches('0');
    if digits.len() > 30 {
        return None;
    }
    let mantissa: i128 = if digits.is_empty() {
        0
    } else {
        digits.parse().ok()?
    };
    let mut exp10: i32 = -(frac.len() as i32);
    let mut binary: u32 = 0;
    match suffix {
        "" => {}
        "n" => exp10 -= 9,
        "u" => exp10 -= 6,
        "m" => exp10 -= 3,
        "k" => exp10 += 3,
        "M" => exp10 += 6,
        "G" => exp10 += 9,
        "T" => exp10 += 12,
        "P" => exp10 += 15,
        "E" => exp10 += 18,
        "Ki" => binary = 10,
        "Mi" => binary = 20,
        "Gi" => binary = 30,
        "Ti" => binary = 40,
        "Pi" => binary = 50,
        "Ei" => binary = 60,
        e if e.starts_with(['e', 'E']) => {
            let n: i32 = e[1..].parse().ok()?;
            if !(-30..=30).contains(&n) {
                return None;
            }
            exp10 += n;
        }
        _ => return None,
    }
    // nanos = mantissa × 2^binary × 10^(exp10 + 9), rounded up.
    let mut value = mantissa.checked_mul(1i128.checked_shl(binary)?)?;
    let scale = exp10 + 9;
    if scale >= 0 {
        value = value.checked_mul(10i128.checked_pow(scale as u32)?)?;
    } else {
        let div = 10i128.checked_pow((-scale) as u32)?;
        value = value / div + i128::from(value % div != 0);
    }
    // Kubernetes bounds quantities to what an int64 of milli-units... of any unit can hold.
    if value > i128::from(i64::MAX) * NANO {
        return None;
    }
    Some(Quantity(if negative { -value } else { value }))
}

fn of(v: &Value) -> Option<Quantity> {
    match v {
        Value::Opaque(o) => o.downcast_ref::<Quantity>().copied(),
        _ => None,
    }
}

fn new(q: i128) -> Value {
    Value::Opaque(Arc::new(Quantity(q)))
}

fn operand(ftx: &FunctionContext, v: &Value) -> Result<i128, ExecutionError> {
    match v {
        Value::Int(i) => Ok(i128::from(*i) * NANO),
        other => of(other)
            .map(|q| q.0)
            .ok_or_else(|| ftx.error("expected a quantity or an int")),
    }
}

fn this(ftx: &FunctionContext, v: &Value) -> Result<Quantity, ExecutionError> {
    of(v).ok_or_else(|| ftx.error("receiver is not a quantity"))
}

pub fn register(ctx: &mut Context<'static, 'static>) {
    let _ = ctx.add_function("quantity", |ftx: &FunctionContext, s: Arc<String>| -> ResolveResult {
        parse(&s)
            .map(|q| new(q.0))
            .ok_or_else(|| ftx.error(format!("quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$': {s}")))
    });
    let _ = ctx.add_function("isQuantity", |s: Arc<String>| parse(&s).is_some());
    let _ = ctx.add_function(
        "sign",
        |ftx: &FunctionContext, This(v): This<Value>| -> ResolveResult {
            Ok(Value::Int(this(ftx, &v)?.0.signum() as i64))
        },
    );
    let _ = ctx.add_function(
        "isInteger",
        |ftx: &FunctionContext, This(v): This<Value>| -> ResolveResult {
            Ok(Value::Bool(this(ftx, &v)?.0 % NANO == 0))
        },
    );
    let _ = ctx.add_function(
        "asInteger",
        |ftx: &FunctionContext, This(v): This<Value>| -> ResolveResult {
            let q = this(ftx, &v)?.0;
            if q % NANO != 0 {
                return Err(ftx.error("cannot convert value to integer"));
            }
            i64::try_from(q / NANO)
                .map(Value::Int)
                .map_err(|_| ftx.error("cannot convert value to integer"))
        },
    );
    let _ = ctx.add_function(
        "asApproximateFloat",
        |ftx: &FunctionContext, This(v): This<Value>| -> ResolveResult {
            Ok(Value::Float(this(ftx, &v)?.0 as f64 / NANO as f64))
        },
    );
    let _ = ctx.add_function(
        "add",
        |ftx: &FunctionContext, This(v): This<Value>, o: Value| -> ResolveResult {
            let sum = this(ftx, &v)?.0.checked_add(operand(ftx, &o)?);
            sum.map(new).ok_or_else(|| ftx.error("quantity overflow"))
        },
    );
    let _ = ctx.add_function(
        "sub",
        |ftx: &FunctionContext, This(v): This<Value>, o: Value| -> ResolveResult {
            let diff = this(ftx, &v)?.0.checked_sub(operand(ftx, &o)?);
            diff.map(new).ok_or_else(|| ftx.error("quantity overflow"))
        },
    );
    let _ = ctx.add_function(
        "isGreaterThan",
        |ftx: &FunctionContext, This(v): This<Value>, o: Value| -> ResolveResult {
            Ok(Value::Bool(this(ftx, &v)?.0 > this(ftx, &o)?.0))
        },
    );
    let _ = ctx.add_function(
        "isLessThan",
        |ftx: &FunctionContext, This(v): This<Value>, o: Value| -> ResolveResult {
            Ok(Value::Bool(this(ftx, &v)?.0 < this(ftx, &o)?.0))
        },
    );
    let _ = ctx.add_function(
        "compareTo",
        |ftx: &FunctionContext, This(v): This<Value>, o: Value| -> ResolveResult {
            Ok(Value::Int(this(ftx, &v)?.0.cmp(&this(ftx, &o)?.0) as i64))
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_parse_exactly_with_every_suffix() {
        let n = |s: &str| parse(s).map(|q| q.0);
        assert_eq!(n("1"), Some(NANO));
        assert_eq!(n("100m"), Some(NANO / 10));
        assert_eq!(n("1.5Gi"), Some(3 * (1 << 29) * NANO));
        assert_eq!(n("1Gi"), n("1073741824"));
        assert_eq!(n("1k"), n("1e3"));
        assert_eq!(n("-2"), Some(-2 * NANO));
        assert_eq!(n("1n"), Some(1));
        assert_eq!(n("0.1n"), Some(1), "rounded up");
        assert_eq!(n(".5"), Some(NANO / 2));
        for bad in ["", "-", "1x", "1..2", "Gi", "1e99", "1.2.3", "ten"] {
            assert_eq!(n(bad), None, "{bad}");
        }
    }
}
