//! The environment end to end: each Kubernetes library through a compiled expression.

use serde_json::json;

use super::*;

fn eval(src: &str, this: serde_json::Value) -> Result<Value, String> {
    let program = compile(src)?;
    let mut ctx = scope();
    ctx.add_variable_from_value("self", value::from_json(&this));
    program.execute(&ctx).map_err(|e| error_text(&e))
}

fn truthy(src: &str) {
    assert_eq!(eval(src, json!({})), Ok(Value::Bool(true)), "{src}");
}

#[test]
fn kubernetes_libraries_evaluate_as_in_kubernetes() {
    for src in [
        // quantity
        "quantity('1Gi') == quantity('1024Mi')",
        "quantity('500m').isLessThan(quantity('1'))",
        "quantity('2').add(3).asInteger() == 5",
        "quantity('1.5').isInteger() == false",
        "quantity('-1k').sign() == -1",
        "quantity('100m').compareTo(quantity('0.1')) == 0",
        "isQuantity('1Ki') && !isQuantity('1KB')",
        "quantity('1.5').asApproximateFloat() == 1.5",
        // url
        "url('https://example.com:8443/a?b=c&b=d').getPort() == '8443'",
        "url('https://example.com/a').getHostname() == 'example.com'",
        "url('https://example.com/a?b=c&b=d').getQuery()['b'] == ['c', 'd']",
        "isURL('/path') && !isURL('no scheme')",
        // ip / cidr
        "ip('10.0.0.1').family() == 4 && ip('::1').isLoopback()",
        "cidr('10.0.0.0/8').containsIP(ip('10.1.2.3'))",
        "cidr('10.0.0.0/8').containsIP('10.1.2.3')",
        "cidr('10.0.0.0/8').containsCIDR('10.1.0.0/16')",
        "cidr('192.168.1.7/24').masked() == cidr('192.168.1.0/24')",
        "cidr('192.168.1.7/24').prefixLength() == 24",
        "string(cidr('192.168.1.7/24').ip()) == '192.168.1.7'",
        "string(ip('fd00::1')) == 'fd00::1'",
        "ip.isCanonical('10.0.0.1') && !ip.isCanonical('fd00:0::1')",
        "isIP('1.2.3.4') && !isIP('1.2.3') && isCIDR('::/0')",
        // regex
        "'abc 123 def 456'.find('[0-9]+') == '123'",
        "'abc 123 def 456'.findAll('[0-9]+') == ['123', '456']",
        "'abc 123 def 456'.findAll('[0-9]+', 1) == ['123']",
        "'abc'.matches('^a.c$')",
        // lists and sets
        "[1, 2, 3].isSorted() && ![2, 1].isSorted()",
        "[1, 2, 3].sum() == 6 && [1.5, 2.5].sum() == 4.0",
        "[3, 1, 2].min() == 1 && [3, 1, 2].max() == 3",
        "[1, 2, 1].indexOf(1) == 0 && [1, 2, 1].lastIndexOf(1) == 2 && [1].indexOf(9) == -1",
        "'hello'.indexOf('l') == 2",
        "sets.contains([1, 2, 3], [3, 1]) && !sets.contains([1], [2])",
        "sets.equivalent([1, 2], [2, 1, 1]) && sets.intersects([1, 2], [2, 9])",
        // format and strings
        "format.dns1123Label().validate('my-name') == optional.none()",
        "format.dns1123Label().validate('My_Name').hasValue()",
        "format.named('labelValue').hasValue() && !format.named('nope').hasValue()",
        "strings.quote('a\"b') == '\"a\\\\\"b\"'",
        "'a,b'.split(',') == ['a', 'b'] && 'Ab'.lowerAscii() == 'ab'",
        // standard CEL
        "has(self.x) == false && [1, 2].all(x, x > 0) && [1, 2].exists_one(x, x == 2)",
        "{'a': 1}.?a.orValue(0) == 1 && {'a': 1}.?b.orValue(0) == 0",
        "duration('1m') > duration('30s')",
    ] {
        truthy(src);
    }
}

#[test]
fn evaluation_errors_are_errors_not_panics() {
    for src in [
        "quantity('nope')",
        "url('nope')",
        "ip('1.2.3')",
        "cidr('10.0.0.0/99')",
        "[].min()",
        "'a'.find('(')",
        "self.missing.field",
        "quantity('1.5').asInteger()",
        "1 / 0",
    ] {
        assert!(eval(src, json!({})).is_err(), "{src}");
    }
    assert_eq!(
        eval("self.missing", json!({})),
        Err("no such key: missing".to_string())
    );
}

#[test]
fn compile_errors_are_worded_as_cel_go() {
    let e = compile("self.x ==").unwrap_err();
    assert!(e.starts_with("ERROR: <input>:"), "{e}");
    assert!(compile("").is_err());
    assert!(compile("self.size() > 1").is_ok());
}

#[test]
fn nested_comprehensions_over_unbounded_lists_cost_their_product() {
    let flat = compile("self.all(x, x > 0)").unwrap();
    let nested = compile("self.all(x, self.all(y, x == y))").unwrap();
    let one = cost::estimate(flat.expression(), &[("self", cost::Unknown)]).unwrap();
    let two = cost::estimate(nested.expression(), &[("self", cost::Unknown)]).unwrap();
    assert!(one < two / 1000, "{one} vs {two}");
    assert!(two > STATIC_ESTIMATED_COST_LIMIT * 100, "{two}");
    // At run time the actual sizes count.
    let list = json!([1, 2, 3]);
    let actual =
        cost::estimate(nested.expression(), &[("self", cost::Actual::One(&list))]).unwrap();
    assert!(actual < 100, "{actual}");
}

#[test]
fn property_names_escape_as_kubernetes_escapes_them() {
    for (name, escaped) in [
        ("namespace", "__namespace__"),
        ("x-y", "x__dash__y"),
        ("a.b/c", "a__dot__b__slash__c"),
        ("a__b", "a__underscores__b"),
        ("plain", "plain"),
    ] {
        assert_eq!(escape(name).as_deref(), Some(escaped));
        assert_eq!(unescape(escaped), name);
    }
    assert_eq!(escape("1abc"), None);
    assert_eq!(escape("a b"), None);
}
