//! Kubernetes' regex library (k8s.io/apiserver/pkg/cel/library/regex.go): `s.find(re)` (the
//! first match, or ""), `s.findAll(re)` and `s.findAll(re, n)`. `matches` is standard CEL.
//! Patterns use the `regex` crate: RE2 syntax and linear time, as Go's regexp.
//!
//! Compiled patterns are cached per process (rules name the same few patterns on every
//! request): `matches` is rewritten at parse time into [`MATCHES`], which uses the cache,
//! since the engine's own `matches` compiles its pattern on every call.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};

use cel::common::ast::{CallExpr, Expr, IdedExpr};
use cel::extractors::This;
use cel::parser::{Macro, MacroExprHelper, ParseError};
use cel::{Context, DeclarationError, Env, ExecutionError, FunctionContext, ResolveResult, Value};

/// What `s.matches(re)` and `matches(s, re)` become.
pub const MATCHES: &str = "@k8sMatches";

/// Patterns kept compiled; past this many the cache starts over.
const CACHED: usize = 1024;

static CACHE: LazyLock<Mutex<HashMap<String, Arc<regex::Regex>>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

fn compile(ftx: &FunctionContext, re: &str) -> Result<Arc<regex::Regex>, ExecutionError> {
    let mut cache = CACHE.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(r) = cache.get(re) {
        return Ok(r.clone());
    }
    let compiled = Arc::new(
        regex::Regex::new(re).map_err(|e| ftx.error(format!("invalid regular expression: {e}")))?,
    );
    if cache.len() >= CACHED {
        cache.clear();
    }
    cache.insert(re.to_string(), compiled.clone());
    Ok(compiled)
}

fn rewrite(
    helper: &mut MacroExprHelper<'_>,
    target: &mut Option<IdedExpr>,
    args: &mut Vec<IdedExpr>,
) -> Result<Option<IdedExpr>, ParseError> {
    let mut args = std::mem::take(args);
    let text = match target.take() {
        Some(t) => t,
        None => args.remove(0),
    };
    Ok(Some(helper.next_expr(Expr::Call(CallExpr {
        func_name: MATCHES.to_string(),
        target: Some(Box::new(text)),
        args,
    }))))
}

/// The parse-time rewrite of `matches` to the cached form.
pub fn macros(env: &mut Env) -> Result<(), DeclarationError> {
    env.add_macro(Macro::receiver("matches", 1, rewrite))?;
    env.add_macro(Macro::global("matches", 2, rewrite))
}

pub fn register(ctx: &mut Context<'static, 'static>) {
    let _ = ctx.add_function(
        MATCHES,
        |ftx: &FunctionContext, This(s): This<Arc<String>>, re: Arc<String>| -> ResolveResult {
            Ok(Value::Bool(compile(ftx, &re)?.is_match(&s)))
        },
    );
    let _ = ctx.add_function(
        "find",
        |ftx: &FunctionContext, This(s): This<Arc<String>>, re: Arc<String>| -> ResolveResult {
            let found = compile(ftx, &re)?.find(&s).map(|m| m.as_str().to_string());
            Ok(Value::String(Arc::new(found.unwrap_or_default())))
        },
    );
    let _ = ctx.add_function(
        "findAll",
        |ftx: &FunctionContext,
         This(s): This<Arc<String>>,
         cel::extractors::Arguments(args): cel::extractors::Arguments|
         -> ResolveResult {
            let Some(Value::String(re)) = args.first() else {
                return Err(ftx.error("findAll takes a regular expression"));
            };
            let limit = match args.get(1) {
                None => usize::MAX,
                Some(Value::Int(n)) if *n < 0 => usize::MAX,
                Some(Value::Int(n)) => *n as usize,
                Some(_) => return Err(ftx.error("findAll's limit must be an int")),
            };
            let all: Vec<Value> = compile(ftx, re)?
                .find_iter(&s)
                .take(limit)
                .map(|m| Value::String(Arc::new(m.as_str().to_string())))
                .collect();
            Ok(Value::List(Arc::new(all)))
        },
    );
}
