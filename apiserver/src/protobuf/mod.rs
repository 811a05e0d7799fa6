//! Protobuf request bodies (`application/vnd.kubernetes.protobuf`), as client-go's typed clients
//! send them — kubectl's `create namespace|configmap|secret|deployment|service...` generators, and
//! deletes through a clientset (a protobuf DeleteOptions body).
//!
//! A body is Kubernetes' envelope: the magic `k8s\0`, then a `runtime.Unknown` message carrying
//! the TypeMeta and the object's own bytes. The object is decoded with a table of the built-in
//! messages' fields (`messages.rs`, generated from the Kubernetes .proto definitions as k8s-pb
//! publishes them, matched to the k8s-openapi schemas the server serves — see
//! `examples/gen_protobuf.rs`) into the same JSON a Go client would have sent, and from there
//! takes the JSON path: validation, defaulting, strategies and errors are shared.
//!
//! Go's JSON drops empty optional fields (`omitempty`) while its protobuf writes every non-pointer
//! field, so optional empty strings and zero timestamps are dropped here; numbers and booleans
//! are kept (a pointer's explicit 0, like `replicas: 0`, must survive). Responses are JSON, which
//! client-go accepts (its Accept header lists JSON after protobuf). Custom resources have no
//! protobuf form, as in Kubernetes: 415.

#[rustfmt::skip]
mod messages;
mod wire;

use serde_json::{Map, Value};

use crate::errors::{ApiError, ApiResult};
use wire::{Reader, WireError, WireType, err};

/// The media type client-go's clientsets send.
pub const MEDIA_TYPE: &str = "application/vnd.kubernetes.protobuf";

/// Kubernetes' envelope prefix.
const MAGIC: &[u8; 4] = b"k8s\0";

/// Nested messages deeper than this are refused (JSONSchemaProps nests without bound).
const MAX_DEPTH: u32 = 100;

/// What a field holds on the wire and how it reads as JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ty {
    Str,
    Int32,
    Int64,
    Bool,
    Double,
    /// Bytes, base64 in JSON (Secret data).
    Bytes,
    /// A message, by its OpenAPI definition name.
    Msg(&'static str),
    MapStr,
    MapBytes,
    MapMsg(&'static str),
    /// An embedded Go struct: its fields are the parent's in JSON (`Volume`'s `VolumeSource`).
    Inline(&'static str),
}

/// One field of a message: its number, its JSON name and type; `rep` for repeated fields,
/// `req` for fields the schema requires (kept even when empty, as Go's JSON keeps them).
#[derive(Debug)]
pub struct Field {
    pub tag: u32,
    pub name: &'static str,
    pub ty: Ty,
    pub rep: bool,
    pub req: bool,
}

#[derive(Debug)]
pub struct Message {
    pub name: &'static str,
    pub fields: &'static [Field],
}

/// Whether a Content-Type names the protobuf encoding.
pub fn is_protobuf(content_type: &str) -> bool {
    content_type.split(';').next().unwrap_or_default().trim() == MEDIA_TYPE
}

/// The message a kind is written with, if it has a protobuf form here.
fn message_of(api_version: &str, kind: &str) -> Option<&'static str> {
    if kind == "DeleteOptions" {
        // Registered in every group/version client-go deletes through.
        return Some("io.k8s.apimachinery.pkg.apis.meta.v1.DeleteOptions");
    }
    messages::KINDS
        .iter()
        .find(|(v, k, _)| *v == api_version && *k == kind)
        .map(|(_, _, m)| *m)
}

fn lookup(name: &str) -> Option<&'static Message> {
    messages::MESSAGES
        .binary_search_by(|m| m.name.cmp(name))
        .ok()
        .map(|i| &messages::MESSAGES[i])
}

/// Decodes a protobuf body into the JSON object it stands for. `api_version`/`kind` are what the
/// endpoint expects, used when the envelope leaves its TypeMeta empty.
pub fn to_json(body: &[u8], api_version: &str, kind: &str) -> ApiResult<Value> {
    let bad = |e: WireError| {
        ApiError::bad_request(format!("the protobuf body could not be decoded: {e}"))
    };
    let Some(envelope) = body.strip_prefix(MAGIC) else {
        return Err(ApiError::bad_request(
            "the protobuf body does not start with Kubernetes' envelope (\"k8s\\x00\")",
        ));
    };
    let unknown = Unknown::decode(envelope).map_err(bad)?;
    if !unknown.content_encoding.is_empty() {
        return Err(ApiError::unsupported_media_type(format!(
            "protobuf bodies with contentEncoding {:?} are not supported",
            unknown.content_encoding
        )));
    }
    let (api_version, kind) = if unknown.kind.is_empty() {
        (api_version.to_string(), kind.to_string())
    } else {
        (unknown.api_version, unknown.kind)
    };
    let Some(name) = message_of(&api_version, &kind) else {
        return Err(ApiError::unsupported_media_type(format!(
            "the body of the request was in an unknown format ({MEDIA_TYPE} for {api_version}, Kind={kind}) - accepted media types include: application/json"
        )));
    };
    let mut object = message(unknown.raw, name, 0).map_err(bad)?;
    if let Value::Object(map) = &mut object {
        map.insert("apiVersion".into(), Value::String(api_version));
        map.insert("kind".into(), Value::String(kind));
    }
    Ok(object)
}

/// `runtime.Unknown`: typeMeta = 1 (apiVersion = 1, kind = 2), raw = 2, contentEncoding = 3,
/// contentType = 4.
#[derive(Default)]
struct Unknown<'a> {
    api_version: String,
    kind: String,
    raw: &'a [u8],
    content_encoding: String,
}

impl<'a> Unknown<'a> {
    fn decode(buf: &'a [u8]) -> Result<Self, WireError> {
        let mut out = Unknown::default();
        let mut r = Reader::new(buf);
        while !r.done() {
            match r.key()? {
                (1, WireType::Len) => {
                    let mut t = Reader::new(r.bytes()?);
                    while !t.done() {
                        match t.key()? {
                            (1, WireType::Len) => out.api_version = string(t.bytes()?)?,
                            (2, WireType::Len) => out.kind = string(t.bytes()?)?,
                            (_, wt) => t.skip(wt)?,
                        }
                    }
                }
                (2, WireType::Len) => out.raw = r.bytes()?,
                (3, WireType::Len) => out.content_encoding = string(r.bytes()?)?,
                (_, wt) => r.skip(wt)?,
            }
        }
        Ok(out)
    }
}

fn string(b: &[u8]) -> Result<String, WireError> {
    String::from_utf8(b.to_vec()).or_else(|_| err("a string field is not valid UTF-8"))
}

fn json_bytes(b: &[u8]) -> Result<Value, WireError> {
    if b.is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_slice(b).or_else(|e| err(format!("embedded JSON is invalid: {e}")))
}

fn base64(b: &[u8]) -> Value {
    serde_json::to_value(k8s_openapi::ByteString(b.to_vec())).unwrap_or(Value::Null)
}

/// Go's zero `time.Time` (0001-01-01T00:00:00Z) as Unix seconds: written by protobuf, `null` in
/// JSON.
const ZERO_TIME_SECONDS: i64 = -62_135_596_800;

fn timestamp(buf: &[u8], micro: bool) -> Result<Value, WireError> {
    let (mut seconds, mut nanos) = (0i64, 0i32);
    let mut r = Reader::new(buf);
    while !r.done() {
        match r.key()? {
            (1, WireType::Varint) => seconds = r.varint()? as i64,
            (2, WireType::Varint) => nanos = r.varint()? as i64 as i32,
            (_, wt) => r.skip(wt)?,
        }
    }
    // Go writes its zero time as an empty message (older clients: as year 1).
    if buf.is_empty() || (seconds == ZERO_TIME_SECONDS && nanos == 0) {
        return Ok(Value::Null);
    }
    let ts = jiff::Timestamp::new(seconds, nanos)
        .or_else(|e| err(format!("timestamp out of range: {e}")))?;
    let base = ts.strftime("%Y-%m-%dT%H:%M:%S").to_string();
    Ok(Value::String(if micro {
        format!("{base}.{:06}Z", ts.subsec_nanosecond() / 1000)
    } else {
        format!("{base}Z")
    }))
}

/// Go's `time.Duration.String()`: "1h2m3.5s", "250ms", "0s".
fn go_duration(nanos: i64) -> String {
    if nanos == 0 {
        return "0s".into();
    }
    let sign = if nanos < 0 { "-" } else { "" };
    let n = nanos.unsigned_abs();
    let frac = |value: u64, unit: u64| {
        let whole = value / unit;
        let rest = value % unit;
        if rest == 0 {
            whole.to_string()
        } else {
            let digits = unit.ilog10() as usize;
            let s = format!("{whole}.{rest:0digits$}");
            s.trim_end_matches('0').to_string()
        }
    };
    if n < 1_000 {
        return format!("{sign}{n}ns");
    }
    if n < 1_000_000 {
        return format!("{sign}{}µs", frac(n, 1_000));
    }
    if n < 1_000_000_000 {
        return format!("{sign}{}ms", frac(n, 1_000_000));
    }
    let hours = n / 3_600_000_000_000;
    let minutes = (n / 60_000_000_000) % 60;
    let seconds = frac(n % 60_000_000_000, 1_000_000_000);
    if hours > 0 {
        format!("{sign}{hours}h{minutes}m{seconds}s")
    } else if minutes > 0 {
        format!("{sign}{minutes}m{seconds}s")
    } else {
        format!("{sign}{seconds}s")
    }
}

const SCHEMA_PROPS: &str =
    "io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.v1.JSONSchemaProps";

/// Non-pointer `omitempty` numbers and booleans of the built-in types (Go struct fields, so
/// always on the protobuf wire): left out when zero, as Go's JSON leaves them out. Pointer
/// fields (`replicas`, `terminationGracePeriodSeconds`, ...) are never listed: their 0 is meant.
const OMIT_ZERO: &[(&str, &str)] = &[
    (
        "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta",
        "generation",
    ),
    ("io.k8s.api.core.v1.ContainerPort", "hostPort"),
    ("io.k8s.api.core.v1.Container", "stdin"),
    ("io.k8s.api.core.v1.Container", "stdinOnce"),
    ("io.k8s.api.core.v1.Container", "tty"),
    ("io.k8s.api.core.v1.EphemeralContainerCommon", "stdin"),
    ("io.k8s.api.core.v1.EphemeralContainerCommon", "stdinOnce"),
    ("io.k8s.api.core.v1.EphemeralContainerCommon", "tty"),
    ("io.k8s.api.core.v1.PodSpec", "hostNetwork"),
    ("io.k8s.api.core.v1.PodSpec", "hostPID"),
    ("io.k8s.api.core.v1.PodSpec", "hostIPC"),
    ("io.k8s.api.core.v1.ServicePort", "nodePort"),
    ("io.k8s.api.apps.v1.DeploymentSpec", "minReadySeconds"),
    ("io.k8s.api.apps.v1.DeploymentSpec", "paused"),
    ("io.k8s.api.apps.v1.ReplicaSetSpec", "minReadySeconds"),
];

/// One field of a small message, read without a table.
struct RawField<'a> {
    tag: u32,
    bytes: Option<&'a [u8]>,
    varint: Option<u64>,
}

fn fields(buf: &[u8]) -> Result<Vec<RawField<'_>>, WireError> {
    let mut out = Vec::new();
    let mut r = Reader::new(buf);
    while !r.done() {
        let (tag, wt) = r.key()?;
        match wt {
            WireType::Len => out.push(RawField {
                tag,
                bytes: Some(r.bytes()?),
                varint: None,
            }),
            WireType::Varint => out.push(RawField {
                tag,
                bytes: None,
                varint: Some(r.varint()?),
            }),
            other => r.skip(other)?,
        }
    }
    Ok(out)
}

/// The last occurrence of a length-delimited field (protobuf: the last one wins).
fn last_bytes<'a>(fs: &[RawField<'a>], tag: u32) -> Option<&'a [u8]> {
    fs.iter().rev().find(|f| f.tag == tag).and_then(|f| f.bytes)
}

fn last_varint(fs: &[RawField<'_>], tag: u32) -> Option<u64> {
    fs.iter()
        .rev()
        .find(|f| f.tag == tag)
        .and_then(|f| f.varint)
}

/// Messages whose JSON form is not an object of their fields.
fn special(buf: &[u8], name: &str, depth: u32) -> Result<Option<Value>, WireError> {
    let Some((package, short)) = name.rsplit_once('.') else {
        return Ok(None);
    };
    const META_PKG: &str = "io.k8s.apimachinery.pkg.apis.meta.v1";
    const APIEXT_PKG: &str = "io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.v1";
    let value = match (package, short) {
        (META_PKG, "Time") => timestamp(buf, false)?,
        (META_PKG, "MicroTime") => timestamp(buf, true)?,
        (META_PKG, "Duration") => {
            let fs = fields(buf)?;
            Value::String(go_duration(last_varint(&fs, 1).unwrap_or(0) as i64))
        }
        (META_PKG, "FieldsV1") => json_bytes(last_bytes(&fields(buf)?, 1).unwrap_or_default())?,
        ("io.k8s.apimachinery.pkg.api.resource", "Quantity") => {
            Value::String(string(last_bytes(&fields(buf)?, 1).unwrap_or_default())?)
        }
        ("io.k8s.apimachinery.pkg.util.intstr", "IntOrString") => {
            let fs = fields(buf)?;
            match last_varint(&fs, 1).unwrap_or(0) {
                0 => Value::from(last_varint(&fs, 2).unwrap_or(0) as i64 as i32),
                _ => Value::String(string(last_bytes(&fs, 3).unwrap_or_default())?),
            }
        }
        ("io.k8s.apimachinery.pkg.runtime", "RawExtension") => {
            let fs = fields(buf)?;
            let raw = last_bytes(&fs, 1).unwrap_or_default();
            if raw.starts_with(MAGIC) {
                return err("an embedded object in protobuf form is not supported; send JSON");
            }
            json_bytes(raw)?
        }
        (APIEXT_PKG, "JSON") => json_bytes(last_bytes(&fields(buf)?, 1).unwrap_or_default())?,
        // A review's `extra` values: repeated strings (items = 1), a list in JSON.
        ("io.k8s.api.authentication.v1" | "io.k8s.api.authorization.v1", "ExtraValue") => {
            let fs = fields(buf)?;
            Value::Array(
                fs.iter()
                    .filter(|f| f.tag == 1)
                    .filter_map(|f| f.bytes)
                    .map(|b| string(b).map(Value::String))
                    .collect::<Result<_, _>>()?,
            )
        }
        (APIEXT_PKG, "JSONSchemaPropsOrArray") => {
            // schema = 1, jsonSchemas = 2 (repeated): an array when the list is set.
            let fs = fields(buf)?;
            let list: Vec<&[u8]> = fs
                .iter()
                .filter(|f| f.tag == 2)
                .filter_map(|f| f.bytes)
                .collect();
            if list.is_empty() {
                message(
                    last_bytes(&fs, 1).unwrap_or_default(),
                    SCHEMA_PROPS,
                    depth + 1,
                )?
            } else {
                Value::Array(
                    list.iter()
                        .map(|b| message(b, SCHEMA_PROPS, depth + 1))
                        .collect::<Result<_, _>>()?,
                )
            }
        }
        (APIEXT_PKG, "JSONSchemaPropsOrBool") => {
            // allows = 1, schema = 2: the schema when set, else the boolean.
            let fs = fields(buf)?;
            match last_bytes(&fs, 2) {
                Some(schema) => message(schema, SCHEMA_PROPS, depth + 1)?,
                None => Value::Bool(last_varint(&fs, 1).unwrap_or(0) != 0),
            }
        }
        (APIEXT_PKG, "JSONSchemaPropsOrStringArray") => {
            // schema = 1, property = 2 (repeated strings): the list when set.
            let fs = fields(buf)?;
            let list: Vec<&[u8]> = fs
                .iter()
                .filter(|f| f.tag == 2)
                .filter_map(|f| f.bytes)
                .collect();
            if list.is_empty() {
                message(
                    last_bytes(&fs, 1).unwrap_or_default(),
                    SCHEMA_PROPS,
                    depth + 1,
                )?
            } else {
                Value::Array(
                    list.iter()
                        .map(|b| string(b).map(Value::String))
                        .collect::<Result<_, _>>()?,
                )
            }
        }
        _ => return Ok(None),
    };
    Ok(Some(value))
}

fn scalar(r: &mut Reader<'_>, wt: WireType, ty: Ty) -> Result<Value, WireError> {
    let want = match ty {
        Ty::Int32 | Ty::Int64 | Ty::Bool => WireType::Varint,
        Ty::Double => WireType::Fixed64,
        _ => WireType::Len,
    };
    if wt != want {
        return err(format!("wire type {wt:?} where {want:?} was expected"));
    }
    Ok(match ty {
        Ty::Int32 => Value::from(r.varint()? as i64 as i32),
        Ty::Int64 => Value::from(r.varint()? as i64),
        Ty::Bool => Value::Bool(r.varint()? != 0),
        Ty::Double => {
            let f = f64::from_bits(r.fixed64()?);
            Value::Number(
                serde_json::Number::from_f64(f)
                    .ok_or_else(|| WireError(format!("{f} is not a JSON number")))?,
            )
        }
        Ty::Str => Value::String(string(r.bytes()?)?),
        Ty::Bytes => base64(r.bytes()?),
        Ty::Msg(_) | Ty::MapStr | Ty::MapBytes | Ty::MapMsg(_) | Ty::Inline(_) => {
            return err("internal: not a scalar");
        }
    })
}

/// A map entry: key = 1, value = 2.
fn map_entry(buf: &[u8], ty: Ty, depth: u32) -> Result<(String, Value), WireError> {
    let mut key = String::new();
    let mut value = None;
    let mut r = Reader::new(buf);
    while !r.done() {
        match r.key()? {
            (1, WireType::Len) => key = string(r.bytes()?)?,
            (2, wt) => {
                value = Some(match ty {
                    Ty::MapStr => scalar(&mut r, wt, Ty::Str)?,
                    Ty::MapBytes => scalar(&mut r, wt, Ty::Bytes)?,
                    Ty::MapMsg(m) if wt == WireType::Len => message(r.bytes()?, m, depth + 1)?,
                    _ => return err("a map value has the wrong wire type"),
                })
            }
            (_, wt) => r.skip(wt)?,
        }
    }
    let value = match (value, ty) {
        (Some(v), _) => v,
        (None, Ty::MapStr | Ty::MapBytes) => Value::String(String::new()),
        (None, Ty::MapMsg(m)) => message(&[], m, depth + 1)?,
        (None, _) => Value::Null,
    };
    Ok((key, value))
}

/// Decodes one message of the table into its JSON object.
fn message(buf: &[u8], name: &str, depth: u32) -> Result<Value, WireError> {
    if depth > MAX_DEPTH {
        return err(format!("messages nest deeper than {MAX_DEPTH}"));
    }
    if let Some(v) = special(buf, name, depth)? {
        return Ok(v);
    }
    let Some(msg) = lookup(name) else {
        return err(format!("no protobuf form is known for {name}"));
    };
    let mut out = Map::new();
    let mut r = Reader::new(buf);
    while !r.done() {
        let (tag, wt) = r.key()?;
        let Some(f) = msg.fields.iter().find(|f| f.tag == tag) else {
            r.skip(wt)?;
            continue;
        };
        match f.ty {
            Ty::MapStr | Ty::MapBytes | Ty::MapMsg(_) => {
                if wt != WireType::Len {
                    return err(format!(
                        "{}.{}: a map entry must be length-delimited",
                        msg.name, f.name
                    ));
                }
                let (k, v) = map_entry(r.bytes()?, f.ty, depth)?;
                let entry = out
                    .entry(f.name)
                    .or_insert_with(|| Value::Object(Map::new()));
                if let Value::Object(m) = entry {
                    m.insert(k, v);
                }
            }
            Ty::Inline(m) => {
                if wt != WireType::Len {
                    return err(format!(
                        "{}: an embedded message must be length-delimited",
                        msg.name
                    ));
                }
                if let Value::Object(inner) = message(r.bytes()?, m, depth + 1)? {
                    out.extend(inner);
                }
            }
            Ty::Msg(m) => {
                if wt != WireType::Len {
                    return err(format!(
                        "{}.{}: a message must be length-delimited",
                        msg.name, f.name
                    ));
                }
                let v = message(r.bytes()?, m, depth + 1)?;
                if f.rep {
                    push(&mut out, f.name, v);
                } else {
                    // A message field seen twice merges, as protobuf specifies.
                    match (out.get_mut(f.name), v) {
                        (Some(Value::Object(old)), Value::Object(new)) => old.extend(new),
                        (_, v) => {
                            out.insert(f.name.into(), v);
                        }
                    }
                }
            }
            ty => {
                let packable = matches!(ty, Ty::Int32 | Ty::Int64 | Ty::Bool | Ty::Double);
                if f.rep && packable && wt == WireType::Len {
                    let mut p = Reader::new(r.bytes()?);
                    let inner = if ty == Ty::Double {
                        WireType::Fixed64
                    } else {
                        WireType::Varint
                    };
                    while !p.done() {
                        let v = scalar(&mut p, inner, ty)?;
                        push(&mut out, f.name, v);
                    }
                } else {
                    let v = scalar(&mut r, wt, ty)
                        .map_err(|e| WireError(format!("{}.{}: {e}", msg.name, f.name)))?;
                    if f.rep {
                        push(&mut out, f.name, v);
                    } else {
                        out.insert(f.name.into(), v);
                    }
                }
            }
        }
    }
    // Go's JSON leaves out what its protobuf always writes: empty optional strings and zero
    // times (null). Numbers and booleans stay — a pointer's explicit 0 or false is meaningful
    // and the wire does not say which fields are pointers — except the plain (non-pointer)
    // ones listed in OMIT_ZERO.
    out.retain(|k, v| {
        let required = msg.fields.iter().any(|f| f.name == k && f.req);
        let zero = matches!(v, Value::Bool(false)) || v.as_i64() == Some(0);
        !(v.is_null()
            || (!required && v.as_str() == Some(""))
            || (zero && OMIT_ZERO.contains(&(msg.name, k.as_str()))))
    });
    Ok(Value::Object(out))
}

fn push(out: &mut Map<String, Value>, name: &str, v: Value) {
    let entry = out.entry(name).or_insert_with(|| Value::Array(Vec::new()));
    if let Value::Array(a) = entry {
        a.push(v);
    }
}

#[cfg(test)]
mod tests;
