//! Kubernetes' URL library (k8s.io/apiserver/pkg/cel/library/urls.go): `url(s)` (an absolute
//! URI or an absolute path, as Go's `url.ParseRequestURI` accepts), `isURL`, and `getScheme`,
//! `getHost`, `getHostname`, `getPort`, `getEscapedPath`, `getQuery`.

use std::collections::HashMap;
use std::sync::Arc;

use cel::extractors::This;
use cel::{Context, ExecutionError, FunctionContext, ResolveResult, Value};

#[derive(Debug, PartialEq, Eq, Clone)]
pub struct Url {
    scheme: String,
    /// `host[:port]` as written.
    host: String,
    path: String,
    query: String,
}

impl cel::objects::Opaque for Url {
    fn runtime_type_name(&self) -> &str {
        "kubernetes.URL"
    }
}

pub fn parse(s: &str) -> Option<Url> {
    if s.is_empty() || s.chars().any(|c| c.is_ascii_control() || c == ' ') {
        return None;
    }
    let s = s.split_once('#').map_or(s, |(a, _)| a);
    let (rest, query) = s.split_once('?').unwrap_or((s, ""));
    if rest.starts_with('/') {
        return Some(Url {
            scheme: String::new(),
            host: String::new(),
            path: rest.to_string(),
            query: query.to_string(),
        });
    }
    let (scheme, after) = rest.split_once(':')?;
    let mut chars = scheme.chars();
    if !chars.next()?.is_ascii_alphabetic()
        || !chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
    {
        return None;
    }
    let (host, path) = match after.strip_prefix("//") {
        Some(authority) => {
            let (auth, path) = match authority.find('/') {
                Some(i) => authority.split_at(i),
                None => (authority, ""),
            };
            let host = auth.rsplit_once('@').map_or(auth, |(_, h)| h);
            (host.to_string(), path.to_string())
        }
        // `mailto:x` is opaque; ParseRequestURI refuses paths that are not absolute.
        None if after.starts_with('/') => (String::new(), after.to_string()),
        None => return None,
    };
    let url = Url {
        scheme: scheme.to_string(),
        host,
        path,
        query: query.to_string(),
    };
    (url.port_ok()).then_some(url)
}

impl Url {
    fn split_host(&self) -> (&str, &str) {
        if let Some(rest) = self.host.strip_prefix('[') {
            let (h, after) = rest.split_once(']').unwrap_or((rest, ""));
            return (h, after.strip_prefix(':').unwrap_or(""));
        }
        match self.host.rsplit_once(':') {
            Some((h, p)) => (h, p),
            None => (&self.host, ""),
        }
    }
    fn port_ok(&self) -> bool {
        self.split_host().1.chars().all(|c| c.is_ascii_digit())
    }
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = |b: u8| (b as char).to_digit(16);
                match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                    (Some(h), Some(l)) => {
                        out.push((h * 16 + l) as u8);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn this(ftx: &FunctionContext, v: &Value) -> Result<Url, ExecutionError> {
    match v {
        Value::Opaque(o) => o.downcast_ref::<Url>().cloned(),
        _ => None,
    }
    .ok_or_else(|| ftx.error("receiver is not a URL"))
}

fn text(s: &str) -> Value {
    Value::String(Arc::new(s.to_string()))
}

pub fn register(ctx: &mut Context<'static, 'static>) {
    let _ = ctx.add_function("url", |ftx: &FunctionContext, s: Arc<String>| -> ResolveResult {
        parse(&s)
            .map(|u| Value::Opaque(Arc::new(u)))
            .ok_or_else(|| ftx.error(format!("URL parse error during conversion from string: parse {s:?}: invalid URI for request")))
    });
    let _ = ctx.add_function("isURL", |s: Arc<String>| parse(&s).is_some());
    let _ = ctx.add_function(
        "getScheme",
        |ftx: &FunctionContext, This(v): This<Value>| -> ResolveResult {
            Ok(text(&this(ftx, &v)?.scheme))
        },
    );
    let _ = ctx.add_function(
        "getHost",
        |ftx: &FunctionContext, This(v): This<Value>| -> ResolveResult {
            Ok(text(&this(ftx, &v)?.host))
        },
    );
    let _ = ctx.add_function(
        "getHostname",
        |ftx: &FunctionContext, This(v): This<Value>| -> ResolveResult {
            Ok(text(this(ftx, &v)?.split_host().0))
        },
    );
    let _ = ctx.add_function(
        "getPort",
        |ftx: &FunctionContext, This(v): This<Value>| -> ResolveResult {
            Ok(text(this(ftx, &v)?.split_host().1))
        },
    );
    let _ = ctx.add_function(
        "getEscapedPath",
        |ftx: &FunctionContext, This(v): This<Value>| -> ResolveResult {
            Ok(text(&this(ftx, &v)?.path))
        },
    );
    let _ = ctx.add_function(
        "getQuery",
        |ftx: &FunctionContext, This(v): This<Value>| -> ResolveResult {
            let u = this(ftx, &v)?;
            let mut out: HashMap<String, Vec<Value>> = HashMap::new();
            for pair in u.query.split('&').filter(|p| !p.is_empty()) {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                out.entry(decode(k)).or_default().push(text(&decode(v)));
            }
            let map: HashMap<String, Value> = out
                .into_iter()
                .map(|(k, v)| (k, Value::List(Arc::new(v))))
                .collect();
            Ok(Value::Map(map.into()))
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_as_go_does() {
        let u = parse("https://user@example.com:8080/a%20b?x=1&x=2#frag").unwrap();
        assert_eq!(u.scheme, "https");
        assert_eq!(u.host, "example.com:8080");
        assert_eq!(u.split_host(), ("example.com", "8080"));
        assert_eq!(u.path, "/a%20b");
        assert_eq!(u.query, "x=1&x=2");
        assert_eq!(
            parse("https://[::1]:80/").unwrap().split_host(),
            ("::1", "80")
        );
        assert_eq!(parse("/just/a/path").unwrap().path, "/just/a/path");
        for bad in [
            "",
            "example.com",
            "1http://x",
            "mailto:me",
            "http://x:port/",
            "a b",
        ] {
            assert!(parse(bad).is_none(), "{bad}");
        }
        assert_eq!(decode("a%2Fb+c"), "a/b c");
    }
}
