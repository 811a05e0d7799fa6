//! YAML request bodies (server-side apply's `application/apply-patch+yaml`), decoded within
//! bounds the parser cannot be talked out of:
//! - **Depth.** libyaml (serde_yaml's parser) walks its stack of flow levels for every token, so
//!   100,000 nested `[` cost 17 s before serde_yaml's depth check ran on the parsed events.
//!   [`flow_depth_bound`] bounds the flow nesting from the raw bytes first, in one pass, and a
//!   body that could nest deeper than [`MAX_DEPTH`] is refused before libyaml sees it.
//! - **Aliases.** An alias replays its anchor, so a few lines can stand for gigabytes (the
//!   "billion laughs"). The values are built through [`Bounded`], which counts what it builds —
//!   replayed aliases included — and stops past twice the body's size.
//!
//! JSON bodies never get here: serde_json decodes them in linear time and stops at depth 128.

use std::cell::Cell;
use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

use crate::errors::{ApiError, ApiResult};
use crate::patch::budget::MAX_DEPTH;

/// An upper bound of the flow nesting (`[`, `{`) libyaml can reach in `text`, whatever the
/// text means. One pass over the bytes, tracking every way a byte may be read — plain text,
/// inside a single- or double-quoted scalar, a comment, a tag — and for each the deepest nesting
/// that reading allows: a quote may open a quoted scalar or be plain text, a `#` may open a
/// comment or not, a tag may end before any byte. The real reading is one of those tracked, and
/// each bracket moves every reading's depth the same way or not at all, so the largest depth
/// seen is never below the real one. Brackets in plain text or block scalars count too: an
/// over-estimate, refused only past [`MAX_DEPTH`]. `text` is UTF-8, so no byte of a multi-byte
/// character is an ASCII bracket or quote.
pub fn flow_depth_bound(text: &str) -> usize {
    // The deepest nesting of each reading, None when no path reaches it.
    #[derive(Clone, Copy)]
    enum Mode {
        Plain = 0,
        Single = 1,
        Double = 2,
        Escape = 3,
        Comment = 4,
        Tag = 5,
    }
    type State = [Option<usize>; 6];
    fn join(s: &mut State, m: Mode, d: usize) {
        let slot = &mut s[m as usize];
        *slot = Some(slot.map_or(d, |x| x.max(d)));
    }
    fn plain(next: &mut State, b: u8, d: usize) {
        match b {
            b'[' | b'{' => join(next, Mode::Plain, d + 1),
            b']' | b'}' => join(next, Mode::Plain, d.saturating_sub(1)),
            _ => {
                join(next, Mode::Plain, d);
                // Or the byte opens a quoted scalar, a comment or a tag.
                let opened = match b {
                    b'\'' => Some(Mode::Single),
                    b'"' => Some(Mode::Double),
                    b'#' => Some(Mode::Comment),
                    b'!' => Some(Mode::Tag),
                    _ => None,
                };
                if let Some(m) = opened {
                    join(next, m, d);
                }
            }
        }
    }
    let mut state: State = [Some(0), None, None, None, None, None];
    let mut deepest = 0;
    for &b in text.as_bytes() {
        let mut next: State = [None; 6];
        for (m, d) in state.iter().enumerate() {
            let Some(d) = *d else { continue };
            match m {
                0 => plain(&mut next, b, d),
                1 => {
                    join(&mut next, Mode::Single, d);
                    if b == b'\'' {
                        join(&mut next, Mode::Plain, d);
                    }
                }
                2 => match b {
                    b'\\' => join(&mut next, Mode::Escape, d),
                    b'"' => join(&mut next, Mode::Plain, d),
                    _ => join(&mut next, Mode::Double, d),
                },
                3 => join(&mut next, Mode::Double, d),
                4 => {
                    join(&mut next, Mode::Comment, d);
                    // Line breaks, NEL, LS and PS (bytes of non-ASCII characters, to be safe).
                    if matches!(b, b'\n' | b'\r') || b >= 0x80 {
                        join(&mut next, Mode::Plain, d);
                    }
                }
                _ => {
                    join(&mut next, Mode::Tag, d);
                    plain(&mut next, b, d);
                }
            }
        }
        deepest = deepest.max(next.iter().flatten().copied().max().unwrap_or(0));
        state = next;
    }
    deepest
}

/// Builds a [`Value`] from any serde data, counting what it builds (each value 1, a string its
/// length) against a budget: an error, and no more work, once it is spent.
#[derive(Clone, Copy)]
pub struct Bounded<'a> {
    pub budget: &'a Cell<usize>,
}

impl std::fmt::Debug for Bounded<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Bounded({})", self.budget.get())
    }
}

impl Bounded<'_> {
    fn spend<E: serde::de::Error>(&self, n: usize) -> Result<(), E> {
        match self.budget.get().checked_sub(n) {
            Some(left) => {
                self.budget.set(left);
                Ok(())
            }
            None => {
                self.budget.set(0);
                Err(E::custom(
                    "the document expands (through aliases) to more than twice its size",
                ))
            }
        }
    }
}

impl<'de> DeserializeSeed<'de> for Bounded<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Bounded<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Value, E> {
        self.spend(1)?;
        Ok(Value::Bool(v))
    }

    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Value, E> {
        self.spend(1)?;
        Ok(Value::Number(v.into()))
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Value, E> {
        self.spend(1)?;
        Ok(Value::Number(v.into()))
    }

    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Value, E> {
        self.spend(1)?;
        Ok(Number::from_f64(v).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Value, E> {
        self.spend(1 + v.len())?;
        Ok(Value::String(v.to_string()))
    }

    fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Value, E> {
        self.spend(1 + v.len())?;
        Ok(Value::String(v))
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<Value, E> {
        self.spend(1)?;
        Ok(Value::Null)
    }

    fn visit_none<E: serde::de::Error>(self) -> Result<Value, E> {
        self.visit_unit()
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(self)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        self.spend(1)?;
        let mut out = Vec::new();
        while let Some(v) = seq.next_element_seed(self)? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        self.spend(1)?;
        let mut out = Map::new();
        while let Some(k) = map.next_key_seed(self)? {
            let key = match k {
                Value::String(s) => s,
                other => other.to_string(),
            };
            let v = map.next_value_seed(self)?;
            out.insert(key, v);
        }
        Ok(Value::Object(out))
    }
}

/// Decodes a YAML document into JSON: refused (400) when it is not UTF-8, could nest deeper than
/// [`MAX_DEPTH`], expands past twice its size, or is not YAML.
pub fn decode(body: &[u8]) -> ApiResult<Value> {
    let text = std::str::from_utf8(body)
        .map_err(|e| ApiError::bad_request(format!("the body is not UTF-8: {e}")))?;
    let bound = flow_depth_bound(text);
    if bound > MAX_DEPTH {
        return Err(ApiError::bad_request(format!(
            "the YAML document may nest more than {MAX_DEPTH} levels deep (up to {bound}); refused before parsing"
        )));
    }
    let budget = Cell::new(2 * body.len() + 64);
    Bounded { budget: &budget }
        .deserialize(serde_yaml::Deserializer::from_str(text))
        .map_err(|e| ApiError::bad_request(format!("the body is not valid YAML: {e}")))
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use serde_json::json;

    use super::*;

    #[test]
    fn documents_decode_as_serde_yaml_decodes_them() {
        let doc = "a: 1\nb: [x, 'y', \"z\"]\nc: {d: null, e: true}\nf: |\n  text [\n";
        assert_eq!(
            decode(doc.as_bytes()).unwrap(),
            json!({"a": 1, "b": ["x", "y", "z"], "c": {"d": null, "e": true}, "f": "text [\n"})
        );
        let aliased = "base: &b {x: 1}\nuse: *b\n";
        assert_eq!(
            decode(aliased.as_bytes()).unwrap(),
            json!({"base": {"x": 1}, "use": {"x": 1}})
        );
    }

    #[test]
    fn deep_flow_nesting_is_refused_before_parsing_and_quickly() {
        // Issue 16: 100,000 nested `[` (200 KB) took 17.6 s in libyaml before any depth check.
        let body = "[".repeat(100_000);
        let started = Instant::now();
        let e = decode(body.as_bytes()).unwrap_err();
        assert_eq!(e.code, 400);
        assert!(e.message.contains("nest"), "{}", e.message);
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        // As deep as allowed still parses.
        let ok = format!("{}1{}", "[".repeat(100), "]".repeat(100));
        assert!(decode(ok.as_bytes()).is_ok());
    }

    #[test]
    fn the_depth_bound_is_never_below_the_real_nesting() {
        // Quotes, comments and tags that might hide brackets are read both ways.
        for (text, real) in [
            ("[[a]]", 2),
            ("a: '[[['\nb: [[x]]", 2),
            ("a: \"]]]\" \nb: [[x]]", 2),
            ("a: it's\nb: [[[x]]]\nc: 'q'", 3),
            ("# ]]]\n[[x]]", 2),
            ("a: b#]]\nc: [[x]]", 2),
            ("[!t]]] [[x]]]", 3),
            ("a: |\n  ']]]\nb: [[[x]]]\nc: '", 3),
        ] {
            let bound = flow_depth_bound(text);
            assert!(bound >= real, "{text:?}: bound {bound} < {real}");
        }
    }

    #[test]
    fn alias_expansion_is_bounded() {
        let mut doc = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..12 {
            let prev = format!("*a{}", i - 1);
            doc.push_str(&format!("a{i}: &a{i} [{}]\n", vec![prev; 10].join(", ")));
        }
        let started = Instant::now();
        let e = decode(doc.as_bytes()).unwrap_err();
        assert!(
            e.message.contains("expands") || e.message.contains("repetition"),
            "{}",
            e.message
        );
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        // A long string repeated through aliases is counted by its length.
        let big = format!(
            "s: &s \"{}\"\nl: [{}]\n",
            "z".repeat(10_000),
            vec!["*s"; 100].join(", ")
        );
        assert!(decode(big.as_bytes()).is_err());
    }

    #[test]
    fn bodies_that_are_not_utf8_are_refused() {
        assert_eq!(decode(&[0xff, 0xfe, b'a', 0]).unwrap_err().code, 400);
    }
}
