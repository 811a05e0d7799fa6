//! Kubernetes' CEL environment (k8s.io/apiserver/pkg/cel): one [`Env`] and one root
//! [`Context`], built once per process, on which CustomResourceDefinitions' validation rules
//! (`x-kubernetes-validations`) and ValidatingAdmissionPolicies compile and run.
//!
//! The engine is the `cel` crate (parser, macros, the standard library, and cel-go's strings,
//! lists and math extensions). What Kubernetes adds on top lives in [`library`]: `quantity`,
//! `url`, `ip`/`cidr`, regex `find`/`findAll`, the Kubernetes list functions (`isSorted`,
//! `sum`, `min`, `max`, `indexOf`, `lastIndexOf`), `sets`, `format` and `strings.quote`.
//!
//! The crate has no type checker and no cost tracker; [`cost`] supplies both the way
//! Kubernetes uses cel-go's: a walk over the expression that knows each variable's shape
//! (a schema when the CRD is written, the actual value at run time) reports undefined fields
//! and estimates the worst-case cost, which is held against Kubernetes' limits.
//!
//! Programs are compiled once (per CRD version, per policy) and evaluated many times: each
//! evaluation opens a scope on the shared root context and binds its variables there.

pub mod check;
pub mod cost;
mod library;
pub mod value;

use std::sync::{Arc, LazyLock};

pub use cel::{Context, Program, Value};
use cel::{Env, extensions};

/// Kubernetes' per-expression cost limit for one evaluation (`PerCallLimit`).
pub const PER_CALL_LIMIT: u64 = 1_000_000;
/// Estimated cost a CRD rule (times how often its node can occur) may have
/// (`StaticEstimatedCostLimit`).
pub const STATIC_ESTIMATED_COST_LIMIT: u64 = 10_000_000;
/// Estimated cost all of one CRD version's rules together may have
/// (`StaticEstimatedCRDCostLimit`).
pub const STATIC_ESTIMATED_CRD_COST_LIMIT: u64 = 100_000_000;
/// What validating one custom resource's rules may cost at run time (`RuntimeCELCostBudget`).
pub const RUNTIME_COST_BUDGET: u64 = 10_000_000;
/// The largest request body, which bounds every unbounded string, list and map
/// (`maxRequestSizeBytes`).
pub const MAX_REQUEST_BYTES: u64 = 3 * 1024 * 1024;

static ENV: LazyLock<Arc<Env>> = LazyLock::new(|| {
    let mut env = Env::stdlib();
    let added = env
        .add_extension(extensions::strings)
        .and_then(|()| env.add_extension(extensions::lists))
        .and_then(|()| env.add_extension(extensions::math))
        .and_then(|()| env.add_extension(library::overloads));
    if let Err(e) = added {
        // The set of libraries is fixed at compile time; a clash is a programming error
        // that every test run would show.
        unreachable!("Kubernetes' CEL libraries clash: {e}");
    }
    Arc::new(env)
});

static ROOT: LazyLock<Context<'static, 'static>> = LazyLock::new(|| {
    let mut ctx = Context::with_env(ENV.clone());
    library::functions(&mut ctx);
    ctx
});

/// Compiles an expression in Kubernetes' environment, with its error worded as cel-go's
/// (`ERROR: <input>:1:5: ...`).
pub fn compile(src: &str) -> Result<Program, String> {
    if src.trim().is_empty() {
        return Err("ERROR: <input>:1:1: Syntax error: mismatched input '<EOF>'".into());
    }
    ENV.compile(src).map_err(|e| {
        let text = e.to_string();
        if text.starts_with("ERROR:") {
            text
        } else {
            format!("ERROR: <input>:{text}")
        }
    })
}

/// Words CEL reserves, which a property name must be escaped from (`__namespace__`).
const RESERVED: &[&str] = &[
    "true",
    "false",
    "null",
    "in",
    "as",
    "break",
    "const",
    "continue",
    "else",
    "for",
    "function",
    "if",
    "import",
    "let",
    "loop",
    "package",
    "namespace",
    "return",
    "var",
    "void",
    "while",
];

/// A schema property's name as CEL expressions write it (Kubernetes' escaping): reserved
/// words become `__word__`; `__`, `.`, `-` and `/` become `__underscores__`, `__dot__`,
/// `__dash__` and `__slash__`. `None` for names no expression can reach.
pub fn escape(name: &str) -> Option<std::borrow::Cow<'_, str>> {
    if RESERVED.contains(&name) {
        return Some(format!("__{name}__").into());
    }
    let mut chars = name.chars();
    let first = chars.next()?;
    let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-' | '/');
    if !(first.is_ascii_alphabetic() || matches!(first, '_' | '.' | '-' | '/')) || !chars.all(ok) {
        return None;
    }
    if !name.contains(['.', '-', '/']) && !name.contains("__") {
        return Some(name.into());
    }
    Some(
        name.replace("__", "__underscores__")
            .replace('.', "__dot__")
            .replace('-', "__dash__")
            .replace('/', "__slash__")
            .into(),
    )
}

/// The property name an escaped CEL field name stands for.
pub fn unescape(field: &str) -> std::borrow::Cow<'_, str> {
    if let Some(word) = field.strip_prefix("__").and_then(|f| f.strip_suffix("__"))
        && RESERVED.contains(&word)
    {
        return word.to_string().into();
    }
    if !field.contains("__") {
        return field.into();
    }
    let mut out = String::with_capacity(field.len());
    let mut rest = field;
    while let Some(i) = rest.find("__") {
        out.push_str(&rest[..i]);
        let after = &rest[i..];
        let (text, len) = [
            ("__underscores__", "__"),
            ("__dot__", "."),
            ("__dash__", "-"),
            ("__slash__", "/"),
        ]
        .iter()
        .find(|(esc, _)| after.starts_with(esc))
        .map_or(("__", 2), |(esc, plain)| (*plain, esc.len()));
        out.push_str(text);
        rest = &after[len..];
    }
    out.push_str(rest);
    out.into()
}

/// A fresh scope on the root context, for one evaluation's variables.
pub fn scope() -> Context<'static, 'static> {
    ROOT.new_inner_scope()
}

/// Whether a compiled expression names a variable (`oldSelf`, `params`, ...).
pub fn uses(program: &Program, variable: &str) -> bool {
    program.references().has_variable(variable)
}

/// An evaluation error worded as cel-go words the common ones (`no such key: x`).
pub fn error_text(e: &cel::ExecutionError) -> String {
    match e {
        cel::ExecutionError::NoSuchKey(k) => format!("no such key: {k}"),
        cel::ExecutionError::NoSuchOverload(o) => format!("no such overload: {o}"),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests;
