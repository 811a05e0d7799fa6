//! The API server's request metrics, named as kube-apiserver's: `apiserver_request_total` and
//! `apiserver_request_duration_seconds`.

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry as Metrics};

#[derive(Clone, Debug)]
pub struct RequestMetrics {
    pub total: IntCounterVec,
    pub duration: HistogramVec,
    /// Requests refused before a handler: 401 (`unauthorized`) and 403 (`forbidden`).
    pub denied: IntCounterVec,
}

impl RequestMetrics {
    pub fn register(r: &Metrics) -> prometheus::Result<Self> {
        let total = IntCounterVec::new(
            Opts::new(
                "apiserver_request_total",
                "API requests by verb, resource and HTTP code.",
            ),
            &["verb", "group", "resource", "code"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "apiserver_request_duration_seconds",
                "API request latency by verb and resource.",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
            &["verb", "group", "resource"],
        )?;
        let denied = IntCounterVec::new(
            Opts::new(
                "apiserver_request_denied_total",
                "Requests refused before a handler: by authentication (unauthorized), authorization (forbidden) or the in-flight limits (too_many_requests).",
            ),
            &["reason"],
        )?;
        r.register(Box::new(total.clone()))?;
        r.register(Box::new(duration.clone()))?;
        r.register(Box::new(denied.clone()))?;
        Ok(RequestMetrics {
            total,
            duration,
            denied,
        })
    }
}
