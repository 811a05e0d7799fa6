//! The schema engine's tests: parsing, pruning, defaulting and validation.

use super::formats::{is_base64, is_go_duration};
use super::*;
use serde_json::json;

fn parse(v: Value) -> Schema {
    let mut errs = Vec::new();
    let s = Schema::parse(&v, "schema", &mut errs);
    assert!(errs.is_empty(), "{errs:?}");
    s
}

fn parse_errs(v: Value) -> Vec<String> {
    let mut errs = Vec::new();
    Schema::parse(&v, "schema", &mut errs);
    errs.into_iter()
        .map(|e| format!("{}: {}", e.field, e.message))
        .collect()
}

fn fields(errs: &[FieldError]) -> Vec<&str> {
    errs.iter().map(|e| e.field.as_str()).collect()
}

fn widget() -> Schema {
    parse(json!({
        "type": "object",
        "properties": {
            "spec": {
                "type": "object",
                "required": ["size"],
                "properties": {
                    "size": {"type": "integer", "minimum": 1, "maximum": 10, "format": "int32"},
                    "color": {"type": "string", "enum": ["red", "green"], "default": "red"},
                    "name": {"type": "string", "minLength": 2, "maxLength": 5, "pattern": "^[a-z]+$"},
                    "when": {"type": "string", "format": "date-time"},
                    "port": {"x-kubernetes-int-or-string": true},
                    "tags": {"type": "array", "maxItems": 3, "items": {"type": "string"}, "x-kubernetes-list-type": "set"},
                    "ports": {"type": "array", "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"],
                        "items": {"type": "object", "required": ["name"], "properties": {"name": {"type": "string"}, "n": {"type": "integer", "default": 80}}}},
                    "note": {"type": "string", "nullable": true},
                    "extra": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                    "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                }
            },
            "status": {"type": "object", "properties": {"ready": {"type": "boolean"}}}
        }
    }))
}

#[test]
fn a_valid_object_is_pruned_and_defaulted() {
    let s = widget();
    let mut obj = json!({"apiVersion": "x/v1", "kind": "W", "metadata": {"name": "a", "whatever": 1},
        "spec": {"size": 3, "bogus": true, "ports": [{"name": "http"}], "extra": {"anything": [1]},
                 "labels": {"a": "b"}, "note": null},
        "junk": 1});
    let errs = s.admit(&mut obj);
    assert!(errs.is_empty(), "{errs:?}");
    assert_eq!(obj["spec"]["color"], "red");
    assert_eq!(obj["spec"]["ports"][0]["n"], 80);
    assert!(obj["spec"].get("bogus").is_none());
    assert!(obj.get("junk").is_none());
    assert_eq!(obj["spec"]["extra"]["anything"], json!([1]));
    assert!(
        obj["metadata"].get("whatever").is_none(),
        "metadata keeps ObjectMeta's fields only"
    );
    assert_eq!(obj["metadata"]["name"], "a");
    assert!(obj["spec"]["note"].is_null());
}

#[test]
fn every_failing_field_is_reported() {
    let s = widget();
    let mut obj = json!({"spec": {"size": 11, "color": "blue", "name": "ABCDEFG", "when": "yesterday",
        "port": true, "tags": ["a", "a", "b", "c"], "ports": [{"name": "x"}, {"name": "x"}]},
        "status": {"ready": "yes"}});
    let errs = s.admit(&mut obj);
    let f = fields(&errs);
    for want in [
        "spec.size",
        "spec.color",
        "spec.name",
        "spec.when",
        "spec.port",
        "spec.tags",
        "spec.tags[1]",
        "spec.ports[1]",
        "status.ready",
    ] {
        assert!(f.contains(&want), "{want} missing from {errs:#?}");
    }
    // name breaks maxLength and pattern: both reported.
    assert_eq!(f.iter().filter(|x| **x == "spec.name").count(), 2);
    let size = errs.iter().find(|e| e.field == "spec.size").unwrap();
    assert_eq!(
        size.message,
        "Invalid value: 11: spec.size in body should be less than or equal to 10"
    );
}

#[test]
fn required_fields_and_types_have_kubernetes_messages() {
    let s = widget();
    let errs = s.admit(&mut json!({"spec": {"size": "3"}}));
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert_eq!(errs[0].field, "spec.size");
    assert_eq!(
        errs[0].message,
        "Invalid value: \"3\": spec.size in body must be of type integer: \"string\""
    );
    let errs = s.admit(&mut json!({"spec": {}}));
    assert_eq!(errs[0].field, "spec.size");
    assert_eq!(errs[0].message, "Required value");
}

#[test]
fn formats_int32_int64_and_date_time() {
    let s = parse(json!({"type": "object", "properties": {
        "a": {"type": "integer", "format": "int32"},
        "b": {"type": "integer", "format": "int64"},
        "c": {"type": "string", "format": "date-time"},
        "d": {"type": "string", "format": "date"}}}));
    assert!(
        s.admit(&mut json!({"a": 2147483647, "b": 9223372036854775807i64, "c": "2024-01-02T03:04:05Z", "d": "2024-02-29"}))
            .is_empty()
    );
    let errs = s.admit(
        &mut json!({"a": 2147483648i64, "b": 18446744073709551615u64, "c": "2024-01-02", "d": "2023-02-29"}),
    );
    assert_eq!(fields(&errs), vec!["a", "b", "c", "d"], "{errs:?}");
}

#[test]
fn nullable_and_null_defaults() {
    let s = parse(json!({"type": "object", "properties": {
        "n": {"type": "string", "nullable": true},
        "d": {"type": "string", "default": "x"},
        "p": {"type": "string"}}}));
    let mut obj = json!({"n": null, "d": null, "p": null});
    assert!(s.admit(&mut obj).is_empty());
    assert_eq!(obj, json!({"n": null, "d": "x"}));
}

#[test]
fn junctors_validate_where_structural() {
    let s = parse(json!({"type": "object", "properties": {
        "v": {"type": "object", "properties": {"a": {"type": "string"}, "b": {"type": "string"}},
              "oneOf": [{"required": ["a"]}, {"required": ["b"]}]},
        "w": {"x-kubernetes-int-or-string": true, "anyOf": [{"type": "integer"}, {"type": "string", "pattern": "^[0-9]+%$"}]},
        "x": {"type": "string", "not": {"enum": ["forbidden"]}},
        "y": {"type": "integer", "allOf": [{"minimum": 1}, {"maximum": 5}]}}}));
    assert!(
        s.admit(&mut json!({"v": {"a": "1"}, "w": "50%", "x": "ok", "y": 3}))
            .is_empty()
    );
    let errs =
        s.admit(&mut json!({"v": {"a": "1", "b": "2"}, "w": "fifty", "x": "forbidden", "y": 9}));
    assert_eq!(fields(&errs), vec!["v", "w", "x", "y"], "{errs:?}");
}

#[test]
fn non_structural_schemas_are_refused_with_their_paths() {
    let errs = parse_errs(json!({"type": "object", "properties": {
        "a": {"properties": {"b": {"type": "string"}}},
        "c": {"type": "array"},
        "d": {"type": "string", "anyOf": [{"type": "string"}]},
        "e": {"type": "object", "properties": {"f": {"type": "string"}}, "additionalProperties": {"type": "string"}},
        "g": {"type": "string", "pattern": "("},
        "h": {"$ref": "#/definitions/x"},
        "i": {"type": "string", "x-kubernetes-validations": [{"rule": "self.size() >"}]},
        "j": {"type": "array", "items": {"type": "object", "properties": {"k": {"type": "string"}}}, "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["k"]},
        "l": {"type": "integer", "default": "nope"},
        "m": {"type": "object", "properties": {"n": {"type": "string"}}, "anyOf": [{"properties": {"o": {"type": "string"}}}]},
        "p": {"type": "array", "items": {"type": "string"}, "uniqueItems": true},
        "q": {"type": "object", "properties": {"r": {"type": "object"}},
              "anyOf": [{"properties": {"r": {"properties": {"s": {"required": ["t"]}}}}}]},
    }}));
    let text = errs.join("\n");
    for want in [
        "schema.properties[a].type: Required value",
        "schema.properties[c].items: Required value",
        "schema.properties[d].anyOf[0].type: Forbidden",
        "schema.properties[e].additionalProperties: Forbidden",
        "schema.properties[g].pattern: Invalid value",
        "schema.properties[h].$ref: Forbidden",
        "schema.properties[i].x-kubernetes-validations[0].rule: Invalid value",
        "schema.properties[j].items.required: Required value",
        "schema.properties[m].anyOf[*].properties[o]: Forbidden",
        "schema.properties[p].uniqueItems: Forbidden",
        "schema.properties[q].anyOf[*].properties[r].properties[s]: Forbidden",
    ] {
        assert!(text.contains(want), "{want} missing from:\n{text}");
    }
    // The default is checked only when the rest is structural.
    let errs = parse_errs(
        json!({"type": "object", "properties": {"l": {"type": "integer", "default": "nope"}}}),
    );
    assert!(
        errs[0].starts_with("schema.properties[l].default: Invalid value"),
        "{errs:?}"
    );
}

#[test]
fn nested_anyof_finishes_quickly() {
    // 40 levels of two-way anyOf over one value: each branch is tried once (no $ref).
    let mut junctor = json!({"minimum": 0});
    for _ in 0..40 {
        junctor = json!({"anyOf": [{"maximum": -1}, junctor.clone(), ]});
    }
    let mut inner = json!({"type": "integer"});
    inner["anyOf"] = json!([{"maximum": -1}, junctor]);
    let s = parse(json!({"type": "object", "properties": {"n": inner}}));
    let started = std::time::Instant::now();
    let errs = s.admit(&mut json!({"n": 5}));
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    // Either it passes (found the branch) or stops with the budget error; never hangs.
    assert!(
        errs.is_empty() || errs[0].message.contains("too complex"),
        "{errs:?}"
    );
}

#[test]
fn durations_and_base64() {
    for ok in ["1h30m", "300ms", "-1.5s", "0", "2h45m10.5s"] {
        assert!(is_go_duration(ok), "{ok}");
    }
    for bad in ["", "1", "h", "1x", "1.2.3s"] {
        assert!(!is_go_duration(bad), "{bad}");
    }
    assert!(is_base64("aGVsbG8="));
    assert!(!is_base64("aGVsbG8"));
}

// --- x-kubernetes-validations -----------------------------------------------------------

fn ruled() -> Schema {
    parse(json!({
        "type": "object",
        "x-kubernetes-validations": [
            {"rule": "self.metadata.name.startsWith('w')", "message": "name must start with w"}
        ],
        "properties": {"spec": {
            "type": "object",
            "x-kubernetes-validations": [
                {"rule": "self.min <= self.max", "messageExpression": "'min ' + string(self.min) + ' exceeds max ' + string(self.max)"},
                {"rule": "self.max >= oldSelf.max", "message": "max may not decrease", "reason": "FieldValueForbidden", "fieldPath": ".max"}
            ],
            "properties": {
                "min": {"type": "integer"},
                "max": {"type": "integer"},
                "limit": {"type": "string", "maxLength": 16, "x-kubernetes-validations": [
                    {"rule": "isQuantity(self) && quantity(self).isLessThan(quantity('1Gi'))", "message": "limit must be a quantity below 1Gi"}
                ]},
                "names": {"type": "array", "maxItems": 8, "items": {"type": "string", "maxLength": 32,
                    "x-kubernetes-validations": [{"rule": "self.matches('^[a-z]+$')"}]}},
                "ports": {"type": "array", "maxItems": 8, "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"],
                    "items": {"type": "object", "required": ["name"], "properties": {
                        "name": {"type": "string", "maxLength": 16}, "port": {"type": "integer"}},
                        "x-kubernetes-validations": [{"rule": "self.port == oldSelf.port", "message": "port is immutable"}]}}
            }
        }}
    }))
}

fn rule_errs(s: &Schema, new: Value, old: Option<Value>) -> Vec<String> {
    s.validate_rules(&new, old.as_ref())
        .into_iter()
        .map(|e| format!("{}: {}", e.field, e.message))
        .collect()
}

#[test]
fn every_failing_rule_is_reported_at_its_level() {
    let s = ruled();
    let errs = rule_errs(
        &s,
        json!({"metadata": {"name": "x"}, "spec": {"min": 5, "max": 1, "limit": "2Gi", "names": ["ok", "Not OK"]}}),
        None,
    );
    assert_eq!(
        errs,
        vec![
            "<nil>: Invalid value: \"object\": name must start with w",
            "spec: Invalid value: \"object\": min 5 exceeds max 1",
            "spec.limit: Invalid value: \"2Gi\": limit must be a quantity below 1Gi",
            "spec.names[1]: Invalid value: \"Not OK\": failed rule: self.matches('^[a-z]+$')",
        ]
    );
    assert!(
        rule_errs(
            &s,
            json!({"metadata": {"name": "w"}, "spec": {"min": 1, "max": 2}}),
            None
        )
        .is_empty()
    );
}

#[test]
fn transition_rules_run_only_against_an_old_value() {
    let s = ruled();
    let old = json!({"metadata": {"name": "w"}, "spec": {"min": 1, "max": 5, "ports": [{"name": "a", "port": 1}]}});
    // A decrease is refused, with the rule's reason and field path.
    let errs = rule_errs(
        &s,
        json!({"metadata": {"name": "w"}, "spec": {"min": 1, "max": 4, "ports": [{"name": "a", "port": 1}]}}),
        Some(old.clone()),
    );
    assert_eq!(errs, vec!["spec.max: Forbidden: max may not decrease"]);
    // A list-map item correlates by key: a changed port is refused, a new item is not checked.
    let errs = rule_errs(
        &s,
        json!({"metadata": {"name": "w"}, "spec": {"min": 1, "max": 5, "ports": [{"name": "b", "port": 9}, {"name": "a", "port": 2}]}}),
        Some(old),
    );
    assert_eq!(
        errs,
        vec!["spec.ports[1]: Invalid value: \"object\": port is immutable"]
    );
}

#[test]
fn unchanged_invalid_fields_ratchet() {
    let s = ruled();
    // Written before the rule existed: names[0] is invalid, and stays as it was.
    let old = json!({"metadata": {"name": "w"}, "spec": {"min": 1, "max": 2, "names": ["Bad"]}});
    let new = json!({"metadata": {"name": "w"}, "spec": {"min": 1, "max": 3, "names": ["Bad"]}});
    assert!(rule_errs(&s, new, Some(old.clone())).is_empty());
    // Changing the invalid field itself is checked.
    let new = json!({"metadata": {"name": "w"}, "spec": {"min": 1, "max": 2, "names": ["Worse!"]}});
    assert_eq!(rule_errs(&s, new, Some(old)).len(), 1);
}

#[test]
fn rules_are_refused_at_write_as_kubernetes_refuses_them() {
    let errs = parse_errs(json!({"type": "object", "properties": {
        "a": {"type": "string", "x-kubernetes-validations": [
            {"rule": "self.size() >"},
            {"rule": "self.nope == 1"},
            {"rule": "true", "reason": "Sometimes"},
            {"rule": "true", "optionalOldSelf": true},
            {"rule": "true", "message": "two\nlines"},
            {"message": "no rule"}
        ]},
        "b": {"type": "object", "properties": {"x": {"type": "string"}},
            "x-kubernetes-validations": [{"rule": "self.y == 'z'"}, {"rule": "true", "fieldPath": ".nope"}]},
        "list": {"type": "array", "items": {"type": "object", "properties": {"x": {"type": "integer"}},
            "x-kubernetes-validations": [{"rule": "self.x == oldSelf.x"}]}}
    }}));
    let has = |needle: &str| {
        assert!(
            errs.iter().any(|e| e.contains(needle)),
            "{needle} not in {errs:#?}"
        )
    };
    has(
        "properties[a].x-kubernetes-validations[0].rule: Invalid value: \"self.size() >\": compilation failed: ERROR: <input>:",
    );
    has(
        "properties[a].x-kubernetes-validations[1].rule: Invalid value: \"self.nope == 1\": compilation failed: ERROR: <input>: undefined field 'nope'",
    );
    has("properties[a].x-kubernetes-validations[2].reason: Unsupported value: \"Sometimes\"");
    has(
        "properties[a].x-kubernetes-validations[3].optionalOldSelf: Forbidden: may not be set if oldSelf is not used in rule",
    );
    has(
        "properties[a].x-kubernetes-validations[4].message: Invalid value: \"two\\nlines\": message must not contain line breaks",
    );
    has("properties[a].x-kubernetes-validations[5].rule: Required value");
    has(
        "properties[b].x-kubernetes-validations[0].rule: Invalid value: \"self.y == 'z'\": compilation failed: ERROR: <input>: undefined field 'y'",
    );
    has(
        "properties[b].x-kubernetes-validations[1].fieldPath: Invalid value: \"nope\": fieldPath must be a valid path",
    );
    has(
        "properties[list].items.x-kubernetes-validations[0].rule: Forbidden: oldSelf cannot be used on the uncorrelatable portion of the schema",
    );
}

#[test]
fn rules_over_budget_are_refused_and_bounds_bring_them_under() {
    let unbounded = parse_errs(json!({"type": "object", "properties": {
        "names": {"type": "array", "items": {"type": "string"},
            "x-kubernetes-validations": [{"rule": "self.all(x, self.all(y, x == y || !x.matches(y)))"}]}
    }}));
    assert!(
        unbounded.iter().any(|e| e.contains("x-kubernetes-validations[0].rule: Forbidden: estimated rule cost exceeds budget by factor of more than 100x (try simplifying the rule, or adding maxItems, maxProperties, and maxLength where arrays, maps, and strings are declared)")),
        "{unbounded:#?}"
    );
    parse(json!({"type": "object", "properties": {
        "names": {"type": "array", "maxItems": 20, "items": {"type": "string", "maxLength": 64},
            "x-kubernetes-validations": [{"rule": "self.all(x, self.all(y, x == y || !x.matches(y)))"}]}
    }}));
    // A cheap rule on a node that can occur a million times adds up past the CRD's total.
    let mut props = serde_json::Map::new();
    for i in 0..12 {
        props.insert(format!("l{i}"), json!({"type": "array", "items": {"type": "object", "properties": {"s": {"type": "string", "maxLength": 1000}},
            "x-kubernetes-validations": [{"rule": "self.s.startsWith('a') && self.s.endsWith('b') && self.s.contains('c')"}]}}));
    }
    let total = parse_errs(json!({"type": "object", "properties": props}));
    assert!(total.iter().any(|e| e.contains("estimated rule & messageExpression cost total for entire OpenAPIv3 schema exceeds budget")), "{total:#?}");
}

#[test]
fn a_runtime_cost_over_the_per_call_limit_stops_validation() {
    // Statically bounded by maxItems, but the actual list is what counts at run time.
    let s = parse(
        json!({"type": "object", "properties": {"l": {"type": "array", "maxItems": 1000,
        "items": {"type": "integer"},
        "x-kubernetes-validations": [{"rule": "self.all(x, self.exists(y, y == x))"}]}}}),
    );
    let small: Vec<i64> = (0..10).collect();
    assert!(rule_errs(&s, json!({"l": small}), None).is_empty());
    let big: Vec<i64> = (0..800).collect();
    let errs = rule_errs(&s, json!({"l": big}), None);
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(errs[0].contains("call cost exceeds limit"), "{errs:?}");
}
