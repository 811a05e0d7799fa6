//! Property tests of the CRD schema engine (prune, default, validate), from a seeded generator
//! (the seed is printed on failure, so a failure replays):
//! - a schema and an object built to satisfy it are admitted with no errors, and admitting the
//!   result again changes nothing (idempotence);
//! - breaking one field of a valid object is reported at exactly that field's path;
//! - pruning only removes: every field left was given or defaulted;
//! - arbitrary junk schemas and values never panic, and validation finishes within its budget;
//! - adversarial shapes (deep nesting, wide objects, long arrays, nested anyOf) stay fast.

use std::time::{Duration, Instant};

use capstan_apiserver::crd::schema::Schema;
use serde_json::{Map, Value, json};

/// A schema and a value that satisfies it.
fn gen_valid(rng: &mut fastrand::Rng, depth: u32) -> (Value, Value) {
    let choice = if depth == 0 {
        rng.u8(0..5)
    } else {
        rng.u8(0..8)
    };
    match choice {
        0 => {
            let min = rng.i64(-100..100);
            let max = min + rng.i64(0..100);
            let mut s = json!({"type": "integer", "minimum": min, "maximum": max});
            if rng.bool() {
                s["format"] = json!("int32");
            }
            (s, json!(rng.i64(min..=max)))
        }
        1 => {
            let len = rng.usize(0..8);
            let text: String = (0..len).map(|_| rng.lowercase()).collect();
            let mut s = json!({"type": "string", "maxLength": 8, "pattern": "^[a-z]*$"});
            if rng.bool() {
                s["enum"] = json!([text.clone(), "other"]);
            }
            (s, json!(text))
        }
        2 => (json!({"type": "boolean"}), json!(rng.bool())),
        3 => (
            json!({"type": "string", "format": "date-time"}),
            json!(format!(
                "2024-0{}-1{}T0{}:00:00Z",
                rng.u8(1..10),
                rng.u8(0..10),
                rng.u8(0..10)
            )),
        ),
        4 => (
            json!({"x-kubernetes-int-or-string": true}),
            if rng.bool() {
                json!(rng.i32(..))
            } else {
                json!("50%")
            },
        ),
        5 => {
            let (item_s, _) = gen_valid(rng, depth - 1);
            let n = rng.usize(0..4);
            let items: Vec<Value> = (0..n)
                .map(|_| {
                    // A fresh value for the same schema: regenerate until the shape matches.
                    conforming(rng, &item_s)
                })
                .collect();
            (
                json!({"type": "array", "items": item_s, "maxItems": 4}),
                json!(items),
            )
        }
        6 => {
            let mut props = Map::new();
            let mut obj = Map::new();
            let mut required = Vec::new();
            for i in 0..rng.usize(1..5) {
                let name = format!("f{i}");
                let (s, v) = gen_valid(rng, depth - 1);
                if rng.u8(0..3) == 0 {
                    required.push(name.clone());
                    obj.insert(name.clone(), v);
                } else if rng.bool() {
                    obj.insert(name.clone(), v);
                }
                props.insert(name, s);
            }
            (
                json!({"type": "object", "properties": props, "required": required}),
                Value::Object(obj),
            )
        }
        _ => {
            let (val_s, _) = gen_valid(rng, depth - 1);
            let mut m = Map::new();
            for i in 0..rng.usize(0..3) {
                m.insert(format!("k{i}"), conforming(rng, &val_s));
            }
            (
                json!({"type": "object", "additionalProperties": val_s}),
                Value::Object(m),
            )
        }
    }
}

/// A value conforming to a schema made by [`gen_valid`].
fn conforming(rng: &mut fastrand::Rng, s: &Value) -> Value {
    if s["x-kubernetes-int-or-string"] == true {
        return json!(rng.i32(..));
    }
    match s["type"].as_str().unwrap_or_default() {
        "integer" => {
            let (min, max) = (
                s["minimum"].as_i64().unwrap(),
                s["maximum"].as_i64().unwrap(),
            );
            json!(rng.i64(min..=max))
        }
        "string" if s["format"] == "date-time" => json!("2025-01-01T00:00:00Z"),
        "string" => match s.get("enum") {
            Some(e) => e[0].clone(),
            None => json!("abc"),
        },
        "boolean" => json!(rng.bool()),
        "array" => json!([conforming(rng, &s["items"])]),
        "object" if s.get("additionalProperties").is_some() => {
            json!({"k": conforming(rng, &s["additionalProperties"])})
        }
        "object" => {
            let mut m = Map::new();
            for r in s["required"].as_array().unwrap() {
                let r = r.as_str().unwrap();
                m.insert(r.to_string(), conforming(rng, &s["properties"][r]));
            }
            Value::Object(m)
        }
        other => panic!("unexpected schema type {other}"),
    }
}

fn parse(s: &Value) -> Schema {
    let mut errs = Vec::new();
    let schema = Schema::parse(s, "schema", &mut errs);
    assert!(errs.is_empty(), "generated schema refused: {errs:?}\n{s:#}");
    schema
}

fn root(spec_schema: Value) -> Value {
    json!({"type": "object", "properties": {"spec": spec_schema}})
}

/// Every leaf path of a value that has a typed scalar schema: (JSON pointer, field path, schema).
fn leaves(s: &Value, v: &Value, ptr: String, path: String, out: &mut Vec<(String, String, Value)>) {
    match (v, s["type"].as_str()) {
        (Value::Object(m), Some("object")) => {
            for (k, child) in m {
                let sub = s["properties"].get(k).or(s.get("additionalProperties"));
                if let Some(sub) = sub {
                    leaves(sub, child, format!("{ptr}/{k}"), format!("{path}.{k}"), out);
                }
            }
        }
        (Value::Array(items), Some("array")) => {
            for (i, item) in items.iter().enumerate() {
                leaves(
                    &s["items"],
                    item,
                    format!("{ptr}/{i}"),
                    format!("{path}[{i}]"),
                    out,
                );
            }
        }
        (_, Some("integer" | "string" | "boolean")) => out.push((ptr, path, s.clone())),
        _ => {}
    }
}

#[test]
fn valid_objects_pass_and_admission_is_idempotent() {
    for seed in 0..400u64 {
        let mut rng = fastrand::Rng::with_seed(seed);
        let (s, v) = gen_valid(&mut rng, 4);
        let schema = parse(&root(s.clone()));
        let mut obj =
            json!({"apiVersion": "x/v1", "kind": "X", "metadata": {"name": "a"}, "spec": v});
        let errs = schema.admit(&mut obj);
        assert!(
            errs.is_empty(),
            "seed {seed}: {errs:?}\nschema {s:#}\nvalue {obj:#}"
        );
        let mut again = obj.clone();
        assert!(schema.admit(&mut again).is_empty(), "seed {seed}");
        assert_eq!(again, obj, "seed {seed}: admission is not idempotent");
    }
}

#[test]
fn a_broken_field_is_reported_at_its_path() {
    let mut checked = 0;
    for seed in 0..400u64 {
        let mut rng = fastrand::Rng::with_seed(seed);
        let (s, v) = gen_valid(&mut rng, 4);
        let mut spots = Vec::new();
        leaves(&s, &v, "/spec".into(), "spec".into(), &mut spots);
        if spots.is_empty() {
            continue;
        }
        let (ptr, path, leaf) = spots[rng.usize(0..spots.len())].clone();
        let wrong = match leaf["type"].as_str().unwrap() {
            "integer" => json!("not a number"),
            "string" => json!(12.5),
            _ => json!({"nested": true}),
        };
        let schema = parse(&root(s.clone()));
        let mut obj = json!({"spec": v});
        *obj.pointer_mut(&ptr).unwrap() = wrong;
        let errs = schema.admit(&mut obj);
        assert!(
            errs.iter().any(|e| e.field == path),
            "seed {seed}: no error at {path}: {errs:?}\n{obj:#}"
        );
        checked += 1;
    }
    assert!(checked > 200, "only {checked} cases had a scalar leaf");
}

fn paths(v: &Value, prefix: String, out: &mut Vec<String>) {
    out.push(prefix.clone());
    match v {
        Value::Object(m) => m
            .iter()
            .for_each(|(k, c)| paths(c, format!("{prefix}/{k}"), out)),
        Value::Array(a) => a
            .iter()
            .enumerate()
            .for_each(|(i, c)| paths(c, format!("{prefix}/{i}"), out)),
        _ => {}
    }
}

#[test]
fn pruning_only_removes_fields() {
    for seed in 0..300u64 {
        let mut rng = fastrand::Rng::with_seed(seed);
        let (s, _) = gen_valid(&mut rng, 3);
        let schema = parse(&root(s));
        let junk = junk_value(&mut rng, 4);
        let mut obj = json!({"spec": junk.clone(), "other": 1});
        let mut dropped = Vec::new();
        schema.prune_root(&mut obj, Some(&mut dropped));
        assert!(obj.get("other").is_none() && dropped.contains(&"other".to_string()));
        let mut before = Vec::new();
        paths(&json!({"spec": junk}), String::new(), &mut before);
        let mut after = Vec::new();
        paths(&obj, String::new(), &mut after);
        for p in after {
            assert!(before.contains(&p), "seed {seed}: pruning added {p}");
        }
    }
}

fn junk_value(rng: &mut fastrand::Rng, depth: u32) -> Value {
    let keys = ["f0", "f1", "f2", "k0", "x", "type", "items", ""];
    match if depth == 0 {
        rng.u8(0..5)
    } else {
        rng.u8(0..7)
    } {
        0 => Value::Null,
        1 => json!(rng.bool()),
        2 => json!(rng.i64(..)),
        3 => json!(rng.f64() * 1e300),
        4 => json!(["", "a", "ünï", "2024-13-45T99:99:99Z"][rng.usize(0..4)]),
        5 => Value::Array(
            (0..rng.usize(0..4))
                .map(|_| junk_value(rng, depth - 1))
                .collect(),
        ),
        _ => Value::Object(
            (0..rng.usize(0..4))
                .map(|_| {
                    (
                        keys[rng.usize(0..keys.len())].to_string(),
                        junk_value(rng, depth - 1),
                    )
                })
                .collect(),
        ),
    }
}

/// Random schema-shaped JSON, including nonsense: keywords with wrong types, junctors,
/// list types, bad patterns.
fn junk_schema(rng: &mut fastrand::Rng, depth: u32) -> Value {
    let mut m = Map::new();
    let n = rng.usize(0..5);
    for _ in 0..n {
        let (k, v) = match rng.u8(0..20) {
            0 => (
                "type",
                json!(
                    [
                        "object", "array", "string", "integer", "number", "boolean", "bogus", ""
                    ][rng.usize(0..8)]
                ),
            ),
            1 if depth > 0 => (
                "properties",
                json!({"a": junk_schema(rng, depth - 1), "b": junk_schema(rng, depth - 1)}),
            ),
            2 if depth > 0 => ("items", junk_schema(rng, depth - 1)),
            3 if depth > 0 => (
                "additionalProperties",
                if rng.bool() {
                    json!(rng.bool())
                } else {
                    junk_schema(rng, depth - 1)
                },
            ),
            4 if depth > 0 => (
                ["anyOf", "oneOf", "allOf"][rng.usize(0..3)],
                json!([junk_schema(rng, depth - 1), junk_schema(rng, depth - 1)]),
            ),
            5 if depth > 0 => ("not", junk_schema(rng, depth - 1)),
            6 => ("required", json!(["a", 3])),
            7 => ("minimum", junk_value(rng, 0)),
            8 => ("maxLength", junk_value(rng, 0)),
            9 => (
                "pattern",
                json!(["^a+$", "(", "[z-a]", "a{1000000}", "\\d+"][rng.usize(0..5)]),
            ),
            10 => ("enum", junk_value(rng, 1)),
            11 => ("default", junk_value(rng, 2)),
            12 => ("nullable", junk_value(rng, 0)),
            13 => ("x-kubernetes-preserve-unknown-fields", json!(rng.bool())),
            14 => ("x-kubernetes-int-or-string", json!(rng.bool())),
            15 => (
                "x-kubernetes-list-type",
                json!(["set", "map", "atomic", "x"][rng.usize(0..4)]),
            ),
            16 => ("x-kubernetes-list-map-keys", json!(["a"])),
            17 => (
                "format",
                json!(
                    [
                        "int32",
                        "int64",
                        "date-time",
                        "date",
                        "byte",
                        "uuid",
                        "weird"
                    ][rng.usize(0..7)]
                ),
            ),
            18 => ("multipleOf", junk_value(rng, 0)),
            _ => ("minItems", junk_value(rng, 0)),
        };
        m.insert(k.to_string(), v);
    }
    Value::Object(m)
}

#[test]
fn junk_schemas_and_values_never_panic() {
    for seed in 0..3000u64 {
        let mut rng = fastrand::Rng::with_seed(seed);
        let s = junk_schema(&mut rng, 4);
        let mut errs = Vec::new();
        let schema = Schema::parse(&s, "schema", &mut errs);
        // Even a refused schema must not panic when used (the server never uses one, but the
        // engine must be total).
        for _ in 0..3 {
            let mut obj = json!({"spec": junk_value(&mut rng, 4), "a": junk_value(&mut rng, 3)});
            let started = Instant::now();
            let _ = schema.admit(&mut obj);
            assert!(
                started.elapsed() < Duration::from_secs(2),
                "seed {seed}: slow"
            );
        }
    }
}

/// A bound that only a super-linear walk breaks: the sizes below take milliseconds when linear
/// and minutes when quadratic, so a generous bound catches that without failing on a machine
/// busy with other work (a 1-2 s bound did, in a debug build under load).
const LINEAR: Duration = Duration::from_secs(15);

#[test]
fn adversarial_shapes_stay_fast() {
    // Deeply nested schema: refused past the depth limit, no stack overflow.
    let mut deep = json!({"type": "string"});
    for _ in 0..1000 {
        deep = json!({"type": "object", "properties": {"a": deep}});
    }
    let mut errs = Vec::new();
    Schema::parse(&deep, "schema", &mut errs);
    assert!(
        errs.iter().any(|e| e.message.contains("nests more than")),
        "{errs:?}"
    );

    // Wide: 2,000 properties, an object setting all of them.
    let mut props = Map::new();
    let mut obj = Map::new();
    for i in 0..2000 {
        props.insert(format!("p{i}"), json!({"type": "integer", "minimum": 0}));
        obj.insert(format!("p{i}"), json!(i));
    }
    let schema = parse(&root(json!({"type": "object", "properties": props})));
    let started = Instant::now();
    assert!(schema.admit(&mut json!({"spec": obj})).is_empty());
    assert!(started.elapsed() < LINEAR, "{:?}", started.elapsed());

    // Long: 100,000 items.
    let s = parse(&root(
        json!({"type": "array", "items": {"type": "integer"}, "x-kubernetes-list-type": "atomic"}),
    ));
    let long: Vec<i64> = (0..100_000).collect();
    let started = Instant::now();
    assert!(s.admit(&mut json!({"spec": long})).is_empty());
    assert!(started.elapsed() < LINEAR, "{:?}", started.elapsed());

    // A 100,000-item set with one duplicate at the end: found, in linear time.
    let s = parse(&root(
        json!({"type": "array", "items": {"type": "integer"}, "x-kubernetes-list-type": "set"}),
    ));
    let mut items: Vec<Value> = (0..100_000).map(|i| json!(i)).collect();
    items.push(json!(7.0));
    let started = Instant::now();
    let errs = s.admit(&mut json!({"spec": items}));
    assert!(started.elapsed() < LINEAR, "{:?}", started.elapsed());
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert_eq!(errs[0].field, "spec[100000]");

    // 2,000 allOf branches each failing on a 100,000-key object: the messages do not
    // serialize the object, and the errors are capped.
    let mut branches = Vec::new();
    for _ in 0..2000 {
        branches.push(json!({"minProperties": 1_000_000}));
    }
    let s = parse(&root(
        json!({"type": "object", "additionalProperties": {"type": "integer"}, "allOf": branches}),
    ));
    let big: Map<String, Value> = (0..100_000).map(|i| (format!("k{i}"), json!(i))).collect();
    let started = Instant::now();
    let errs = s.admit(&mut json!({"spec": big}));
    assert!(started.elapsed() < LINEAR, "{:?}", started.elapsed());
    assert_eq!(errs.len(), capstan_apiserver::crd::schema::MAX_ERRORS + 1);
    assert!(errs.iter().all(|e| e.message.len() < 400));

    // Nested anyOf, 40 deep: each branch is tried once; it finishes fast.
    let mut junctor = json!({"minimum": 0});
    for _ in 0..40 {
        junctor = json!({"anyOf": [{"maximum": -1}, junctor]});
    }
    let s = parse(&root(
        json!({"type": "integer", "anyOf": [{"maximum": -2}, junctor]}),
    ));
    let started = Instant::now();
    let _ = s.admit(&mut json!({"spec": 5}));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}
