//! A seeded fuzz target over the patch engines and the body decoders (issue 16): random
//! operation sequences — copies and moves of whole subtrees, inserts at the front of long lists,
//! nesting — random merge and strategic merge patches with directives, server-side applies by
//! several managers over long keyed lists, and YAML and JSON bodies built to be expensive. Each
//! request must finish within [`TIME_BOUND`], produce a result within the size and depth limits
//! or be refused, and the process's peak memory must stay under [`MEMORY_BOUND`]. The seed is
//! printed on failure, so a failure replays (`PATCH_BOUNDS_SEED=N`).

use std::time::{Duration, Instant};

use capstan_apiserver::patch::budget::{MAX_COPY_BYTES, MAX_DEPTH, depth, encoded_len_within};
use capstan_apiserver::patch::{apply, json, merge, strategic};
use serde_json::{Map, Value, json};

/// The most one request may take: a debug build on a loaded shared machine (a release build
/// takes a small fraction). The blowups this catches took minutes (a JSON patch of doubling
/// copies 22 s and 8.8 GiB; a strategic merge of 30,000 items over 390 s; an update of an object
/// with 20,000 keyed items 611 s).
const TIME_BOUND: Duration = Duration::from_secs(10);

/// The most memory the whole test process may have held at once.
const MEMORY_BOUND: u64 = 1536 * 1024 * 1024;

/// The process's peak resident memory (Linux; 0 elsewhere).
fn peak_memory() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

fn seed() -> u64 {
    std::env::var("PATCH_BOUNDS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..))
}

/// Runs one request, checking its time and the process's memory afterwards.
fn bounded<T>(what: &str, seed: u64, case: usize, f: impl FnOnce() -> T) -> T {
    let started = Instant::now();
    let out = f();
    let took = started.elapsed();
    assert!(
        took < TIME_BOUND,
        "{what} (seed {seed}, case {case}) took {took:?}"
    );
    let peak = peak_memory();
    assert!(
        peak < MEMORY_BOUND,
        "{what} (seed {seed}, case {case}): peak memory {} MiB",
        peak >> 20
    );
    out
}

const KEYS: &[&str] = &[
    "a",
    "b",
    "spec",
    "containers",
    "name",
    "items",
    "x",
    "metadata",
];

/// Random JSON, sometimes with a long list.
fn value(rng: &mut fastrand::Rng, d: u32) -> Value {
    match rng.u8(0..if d == 0 { 4 } else { 8 }) {
        0 => Value::Null,
        1 => json!(rng.i32(..)),
        2 => json!("s".repeat(rng.usize(0..64))),
        3 => json!(rng.bool()),
        4 | 5 => {
            let n = if rng.u8(0..10) == 0 {
                rng.usize(1_000..20_000)
            } else {
                rng.usize(0..5)
            };
            Value::Array((0..n).map(|_| value(rng, 0)).collect())
        }
        _ => {
            let mut m = Map::new();
            for _ in 0..rng.usize(0..5) {
                m.insert(KEYS[rng.usize(..KEYS.len())].into(), value(rng, d - 1));
            }
            Value::Object(m)
        }
    }
}

/// Every JSON pointer into `v` (at most a few hundred, sampled from long lists).
fn pointers(v: &Value, at: String, out: &mut Vec<String>) {
    if out.len() > 400 {
        return;
    }
    out.push(at.clone());
    match v {
        Value::Object(m) => {
            for (k, c) in m {
                pointers(c, format!("{at}/{k}"), out);
            }
        }
        Value::Array(a) => {
            for i in [0, a.len() / 2, a.len().saturating_sub(1)] {
                if let Some(c) = a.get(i) {
                    pointers(c, format!("{at}/{i}"), out);
                }
            }
        }
        _ => {}
    }
}

fn json_patch(rng: &mut fastrand::Rng, doc: &Value) -> Value {
    let mut ptrs = Vec::new();
    pointers(doc, String::new(), &mut ptrs);
    let pick = |rng: &mut fastrand::Rng| {
        let p = ptrs[rng.usize(..ptrs.len())].clone();
        match rng.u8(0..4) {
            0 => format!("{p}/-"),
            1 => format!("{p}/0"),
            2 => format!("{p}/{}", KEYS[rng.usize(..KEYS.len())]),
            _ => p,
        }
    };
    let n = match rng.u8(0..20) {
        0 => 10_001,
        1..=4 => rng.usize(500..3_000),
        _ => rng.usize(1..60),
    };
    let ops: Vec<Value> = (0..n)
        .map(|_| {
            let (from, path) = (pick(rng), pick(rng));
            match rng.u8(0..8) {
                0 => json!({"op": "add", "path": path, "value": value(rng, 2)}),
                1 => json!({"op": "remove", "path": path}),
                2 => json!({"op": "replace", "path": path, "value": value(rng, 1)}),
                3 | 4 => json!({"op": "copy", "from": from, "path": path}),
                5 | 6 => json!({"op": "move", "from": from, "path": path}),
                _ => json!({"op": "test", "path": path, "value": value(rng, 1)}),
            }
        })
        .collect();
    Value::Array(ops)
}

/// A long list of containers (a keyed list: merged by name), `n` of them from `prefix`.
fn containers(rng: &mut fastrand::Rng, prefix: &str, n: usize) -> Value {
    Value::Array(
        (0..n)
            .map(|i| {
                let mut c = json!({"name": format!("{prefix}{i}"), "image": format!("img{}", rng.u8(0..3))});
                if rng.bool() {
                    c["env"] = json!([{"name": "A", "value": "1"}]);
                }
                c
            })
            .collect(),
    )
}

fn pod(rng: &mut fastrand::Rng, prefix: &str, n: usize) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "labels": {"a": "b"},
           "finalizers": (0..rng.usize(0..n.min(2_000) + 1)).map(|i| format!("f/{i}")).collect::<Vec<_>>()},
           "spec": {"containers": containers(rng, prefix, n)}})
}

fn strategic_patch(rng: &mut fastrand::Rng, n: usize) -> Value {
    let prefix = if rng.bool() { "c" } else { "d" };
    let mut p = json!({"spec": {"containers": containers(rng, prefix, n)}});
    if rng.bool() {
        p["spec"]["$setElementOrder/containers"] = containers(rng, "d", n);
    }
    if rng.bool() {
        p["metadata"] = json!({"$deleteFromPrimitiveList/finalizers": (0..n).map(|i| format!("f/{i}")).collect::<Vec<_>>(),
                               "finalizers": (0..n).map(|i| format!("g/{i}")).collect::<Vec<_>>()});
    }
    // (n may be 0: an empty list has no first element to mark.)
    if rng.u8(0..4) == 0
        && let Some(first) = p["spec"]["containers"]
            .as_array_mut()
            .and_then(|c| c.first_mut())
    {
        first["$patch"] = json!("delete");
    }
    if rng.u8(0..4) == 0 {
        p["spec"]["$retainKeys"] = json!(["containers"]);
    }
    p
}

#[test]
fn json_patches_finish_in_bounded_time_and_size_or_are_refused() {
    let seed = seed();
    let mut rng = fastrand::Rng::with_seed(seed);
    for case in 0..40 {
        let mut doc = json!({"spec": value(&mut rng, 4), "metadata": {"name": "x"}});
        let before = encoded_len_within(&doc, usize::MAX).unwrap();
        let patch = json_patch(&mut rng, &doc);
        let body = encoded_len_within(&patch, usize::MAX).unwrap();
        let result = bounded("JSON patch", seed, case, || {
            json::parse(&patch)
                .and_then(|ops| json::apply(&mut doc, &ops).map_err(json::PatchError::api_error))
        });
        if result.is_ok() {
            let after = encoded_len_within(&doc, usize::MAX).unwrap();
            assert!(
                after <= before + body + MAX_COPY_BYTES,
                "seed {seed} case {case}: {after} bytes from {before} + {body}"
            );
            assert!(depth(&doc) <= MAX_DEPTH, "seed {seed} case {case}");
        }
    }
}

#[test]
fn merge_and_strategic_patches_finish_in_bounded_time_and_size() {
    let seed = seed();
    let mut rng = fastrand::Rng::with_seed(seed);
    for case in 0..16 {
        let n = if rng.bool() {
            rng.usize(5_000..20_000)
        } else {
            rng.usize(0..50)
        };
        let live = pod(&mut rng, "c", n);
        let before = encoded_len_within(&live, usize::MAX).unwrap();
        let patch = if rng.bool() {
            strategic_patch(&mut rng, n)
        } else {
            json!({"spec": value(&mut rng, 4), "metadata": value(&mut rng, 2)})
        };
        let body = encoded_len_within(&patch, usize::MAX).unwrap();
        let out = bounded("strategic merge patch", seed, case, || {
            strategic::apply("Pod", &live, &patch)
        });
        if let Ok(out) = out {
            let after = encoded_len_within(&out, usize::MAX).unwrap();
            assert!(after <= before + body, "seed {seed} case {case}");
        }
        let mut merged = live.clone();
        bounded("merge patch", seed, case, || {
            merge::apply(&mut merged, &patch)
        });
        assert!(encoded_len_within(&merged, before + body).is_some());
    }
}

#[test]
fn server_side_applies_finish_in_bounded_time() {
    let seed = seed();
    let mut rng = fastrand::Rng::with_seed(seed);
    for case in 0..8 {
        // Long enough that a scan of the list per field (as before issue 16) takes minutes.
        let n = if rng.u8(0..3) == 0 {
            rng.usize(1_000..3_000)
        } else {
            rng.usize(0..50)
        };
        let mut live = None::<Value>;
        for (step, manager) in ["alice", "bob", "carol", "alice"].into_iter().enumerate() {
            let prefix = ["c", "d", "c"][rng.usize(..3)];
            let config = pod(&mut rng, prefix, if step == 3 { n / 2 } else { n });
            let force = rng.bool();
            let out = bounded("server-side apply", seed, case, || {
                apply::apply("Pod", "v1", live.as_ref(), &config, manager, force, "t")
            });
            if let Ok(obj) = out {
                let mut updated = obj.clone();
                // A random configuration may apply no containers at all.
                if let Some(first) = updated
                    .pointer_mut("/spec/containers/0")
                    .and_then(Value::as_object_mut)
                {
                    first.insert("image".into(), json!("changed"));
                }
                bounded("an update's managedFields", seed, case, || {
                    capstan_apiserver::patch::managed_fields::track_update(
                        "Pod",
                        "v1",
                        "kubectl-edit",
                        Some(&obj),
                        &mut updated,
                        "t",
                    )
                });
                live = Some(updated);
            }
        }
    }
}

#[test]
fn yaml_and_json_bodies_decode_in_bounded_time_and_memory() {
    let seed = seed();
    let mut rng = fastrand::Rng::with_seed(seed);
    for case in 0..40 {
        let mut doc = String::new();
        let n = rng.usize(1_000..200_000);
        match rng.u8(0..6) {
            0 => doc.push_str(&"[".repeat(n)),
            1 => doc.push_str(&format!("{}{}", "- ".repeat(n.min(20_000)), "x")),
            2 => {
                // Anchors of anchors.
                doc.push_str("a0: &a0 [x, x, x, x, x, x, x, x]\n");
                for i in 1..rng.usize(2..20) {
                    let prev = vec![format!("*a{}", i - 1); 8].join(", ");
                    doc.push_str(&format!("a{i}: &a{i} [{prev}]\n"));
                }
            }
            3 => {
                let s = "z".repeat(rng.usize(1..100_000));
                let refs = vec!["*s"; rng.usize(1..5_000)].join(", ");
                doc.push_str(&format!("s: &s \"{s}\"\nl: [{refs}]\n"));
            }
            4 => {
                // Quotes, comments and tags around brackets.
                for _ in 0..n / 16 {
                    doc.push_str(
                        ["[", "'[", "\"]", "# [\n", "!t[ ", "]", "{", "}"][rng.usize(..8)],
                    );
                }
            }
            _ => {
                // Deep JSON, and JSON with repeated keys.
                let d = rng.usize(1..300);
                doc.push_str(&"{\"a\":".repeat(d));
                doc.push_str("{\"k\":1,\"k\":2}");
                doc.push_str(&"}".repeat(d));
            }
        }
        let bytes = doc.into_bytes();
        let decoded = bounded("YAML body", seed, case, || {
            capstan_apiserver::yaml::decode(&bytes)
        });
        if let Ok(v) = decoded {
            assert!(depth(&v) <= MAX_DEPTH + 1, "seed {seed} case {case}");
            assert!(
                encoded_len_within(&v, 4 * bytes.len() + 1024).is_some(),
                "seed {seed} case {case}: expanded past the body"
            );
        }
        bounded("duplicate fields", seed, case, || {
            capstan_apiserver::body::duplicate_fields(&bytes)
        });
        let body = bytes::Bytes::from(bytes);
        bounded("JSON body", seed, case, || {
            capstan_apiserver::body::parse_body(&body)
        })
        .ok();
    }
}
