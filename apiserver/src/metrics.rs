//! The API server's request metrics, named as kube-apiserver's: `apiserver_request_total` and
//! `apiserver_request_duration_seconds`.

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry as Metrics};

#[derive(Clone, Debug)]
pub struct RequestMetrics {
    pub total: IntCounterVec,
    pub duration: HistogramVec,
    /// Requests refused before a handler: 401 (`unauthorized`) and 403 (`forbidden`).
    pub denied: IntCounterVec,
    /// Admission webhook calls: `apiserver_admission_webhook_admission_duration_seconds` and
    /// `apiserver_admission_webhook_rejection_count`, as kube-apiserver names them.
    pub webhook_duration: HistogramVec,
    pub webhook_rejections: IntCounterVec,
    /// `apiserver_crd_conversion_webhook_duration_seconds`.
    pub conversion_duration: HistogramVec,
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
        let webhook_duration = HistogramVec::new(
            HistogramOpts::new(
                "apiserver_admission_webhook_admission_duration_seconds",
                "Admission webhook latency by name, type (admit or validating), operation and whether it rejected.",
            )
            .buckets(vec![0.001, 0.005, 0.025, 0.1, 0.5, 1.0, 2.5, 10.0, 25.0]),
            &["name", "type", "operation", "rejected"],
        )?;
        let webhook_rejections = IntCounterVec::new(
            Opts::new(
                "apiserver_admission_webhook_rejection_count",
                "Admission webhook rejections by name, type, operation, error type (calling_webhook_error, apiserver_internal_error, no_error) and rejection code.",
            ),
            &["name", "type", "operation", "error_type", "rejection_code"],
        )?;
        let conversion_duration = HistogramVec::new(
            HistogramOpts::new(
                "apiserver_crd_conversion_webhook_duration_seconds",
                "CRD conversion webhook latency by CRD, versions and success.",
            )
            .buckets(vec![0.001, 0.005, 0.025, 0.1, 0.5, 1.0, 2.5, 10.0, 25.0]),
            &["crd_name", "from_version", "to_version", "succeeded"],
        )?;
        for m in [&webhook_duration, &conversion_duration] {
            r.register(Box::new(m.clone()))?;
        }
        r.register(Box::new(webhook_rejections.clone()))?;
        r.register(Box::new(total.clone()))?;
        r.register(Box::new(duration.clone()))?;
        r.register(Box::new(denied.clone()))?;
        Ok(RequestMetrics {
            total,
            duration,
            denied,
            webhook_duration,
            webhook_rejections,
            conversion_duration,
        })
    }
}
