//! Metric triggers: a Prometheus instant query (`/api/v1/query`; one sample or a scalar, an
//! empty result reads 0 as KEDA reads it) or any HTTP endpoint whose JSON body holds the number
//! at a path (`{.a.b[0]}` or `$.a.b[0]`), or whose body is the number. http and https (the
//! system's trust roots); a bearer token from a Secret; every request has a deadline and a
//! bounded body.

use std::time::Duration;

use capstan_api::crds::scalingpolicy::MetricTrigger;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

/// The largest response body read.
const MAX_BODY: usize = 1 << 20;

type Https = hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>;

/// One client for every metric source of the process (connections are pooled).
#[derive(Clone)]
pub struct HttpClient {
    client: Client<Https, Empty<Bytes>>,
}

impl std::fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpClient").finish_non_exhaustive()
    }
}

impl HttpClient {
    pub fn new() -> Result<HttpClient, String> {
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_native_roots(std::sync::Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .map_err(|e| format!("the system's trust roots: {e}"))?
            .https_or_http()
            .enable_http1()
            .build();
        Ok(HttpClient {
            client: Client::builder(TokioExecutor::new()).build(connector),
        })
    }

    /// GET `url`; the body when the status is 2xx.
    pub async fn get(
        &self,
        url: &str,
        token: Option<&str>,
        timeout: Duration,
    ) -> Result<Bytes, String> {
        let mut req = hyper::Request::get(url).header("accept", "application/json");
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {}", t.trim()));
        }
        let req = req
            .body(Empty::new())
            .map_err(|e| format!("GET {url}: {e}"))?;
        let work = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| format!("GET {url}: {e}"))?;
            let status = resp.status();
            let body = Limited::new(resp.into_body(), MAX_BODY)
                .collect()
                .await
                .map_err(|e| format!("GET {url}: reading the body: {e}"))?
                .to_bytes();
            if !status.is_success() {
                let text = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
                return Err(format!("GET {url}: {status}: {text}"));
            }
            Ok(body)
        };
        tokio::time::timeout(timeout, work)
            .await
            .map_err(|_| format!("GET {url}: no answer within {timeout:?}"))?
    }
}

/// The trigger's number.
pub async fn read(
    client: &HttpClient,
    m: &MetricTrigger,
    token: Option<&str>,
    timeout: Duration,
) -> Result<f64, String> {
    if let Some(p) = &m.prometheus {
        let query = serde_urlencoded::to_string([("query", p.query.as_str())])
            .map_err(|e| e.to_string())?;
        let url = format!("{}/api/v1/query?{query}", p.url.trim_end_matches('/'));
        let body = client.get(&url, token, timeout).await?;
        let v: Value = serde_json::from_slice(&body)
            .map_err(|e| format!("Prometheus's answer is not JSON: {e}"))?;
        return prometheus_value(&v);
    }
    if let Some(h) = &m.http {
        let body = client.get(&h.url, token, timeout).await?;
        return match h.json_path.as_deref().filter(|p| !p.is_empty()) {
            None => String::from_utf8_lossy(&body)
                .trim()
                .parse::<f64>()
                .map_err(|_| "the body is not a number".to_string()),
            Some(path) => {
                let v: Value = serde_json::from_slice(&body)
                    .map_err(|e| format!("the body is not JSON: {e}"))?;
                let at = lookup(&v, path)?;
                number(at).ok_or_else(|| format!("{path} is {at}, not a number"))
            }
        };
    }
    Err("neither prometheus nor http is set".into())
}

fn number(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
    .filter(|f: &f64| f.is_finite())
}

/// An instant query's one value: a scalar, or a vector of one sample (none reads 0).
pub fn prometheus_value(v: &Value) -> Result<f64, String> {
    if v["status"] != "success" {
        return Err(format!(
            "Prometheus: {}",
            v["error"].as_str().unwrap_or("the query failed")
        ));
    }
    let data = &v["data"];
    match data["resultType"].as_str() {
        Some("scalar") => number(&data["result"][1]).ok_or_else(|| "a scalar with no value".into()),
        Some("vector") => match data["result"].as_array().map(Vec::as_slice) {
            Some([]) => Ok(0.0),
            Some([one]) => number(&one["value"][1]).ok_or_else(|| "a sample with no value".into()),
            Some(many) => Err(format!(
                "the query returned {} series; aggregate it to one (sum, max)",
                many.len()
            )),
            None => Err("a vector with no result".into()),
        },
        other => Err(format!("an unsupported result type {other:?}")),
    }
}

/// The value at a simple JSONPath: `{.a.b[0].c}`, `$.a.b[0].c`, or `a.b`.
pub fn lookup<'a>(v: &'a Value, path: &str) -> Result<&'a Value, String> {
    let p = path.trim();
    let p = p
        .strip_prefix('{')
        .and_then(|p| p.strip_suffix('}'))
        .unwrap_or(p);
    let p = p.strip_prefix('$').unwrap_or(p);
    let mut cur = v;
    for segment in p.split('.').filter(|s| !s.is_empty()) {
        let (key, indexes) = match segment.find('[') {
            Some(i) => (&segment[..i], &segment[i..]),
            None => (segment, ""),
        };
        if !key.is_empty() {
            cur = cur
                .get(key)
                .ok_or_else(|| format!("{path}: no field {key:?}"))?;
        }
        for ix in indexes.split('[').filter(|s| !s.is_empty()) {
            let n: usize = ix
                .strip_suffix(']')
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| format!("{path}: a bad index [{ix}"))?;
            cur = cur
                .get(n)
                .ok_or_else(|| format!("{path}: no element {n}"))?;
        }
    }
    Ok(cur)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn prometheus_answers_read_as_one_number() {
        let vector =
            |r: Value| json!({"status": "success", "data": {"resultType": "vector", "result": r}});
        assert_eq!(
            prometheus_value(&vector(json!([{"metric": {}, "value": [1.0, "42.5"]}]))),
            Ok(42.5)
        );
        assert_eq!(prometheus_value(&vector(json!([]))), Ok(0.0));
        assert!(
            prometheus_value(&vector(json!([{"value": [1, "1"]}, {"value": [1, "2"]}])))
                .unwrap_err()
                .contains("aggregate")
        );
        let scalar =
            json!({"status": "success", "data": {"resultType": "scalar", "result": [1, "7"]}});
        assert_eq!(prometheus_value(&scalar), Ok(7.0));
        let error = json!({"status": "error", "error": "parse error"});
        assert!(
            prometheus_value(&error)
                .unwrap_err()
                .contains("parse error")
        );
        assert!(prometheus_value(&vector(json!([{"value": [1, "NaN"]}]))).is_err());
    }

    #[test]
    fn json_paths_find_numbers_and_say_what_is_missing() {
        let v = json!({"sale": {"orders": [{"open": 12}, {"open": "30"}]}});
        assert_eq!(lookup(&v, "{.sale.orders[1].open}").unwrap(), "30");
        assert_eq!(lookup(&v, "$.sale.orders[0].open").unwrap(), 12);
        assert_eq!(
            number(lookup(&v, "sale.orders[1].open").unwrap()),
            Some(30.0)
        );
        assert!(lookup(&v, "{.sale.closed}").unwrap_err().contains("closed"));
        assert!(lookup(&v, "{.sale.orders[9]}").is_err());
        assert!(lookup(&v, "{.sale.orders[x]}").is_err());
    }
}
