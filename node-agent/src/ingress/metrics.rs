//! The ingress proxy's Prometheus series, per route (the Ingress, the rule's host and path, the
//! Service): requests by status code, latency to the response's headers, and upstream errors
//! by reason — what ingress-nginx's `nginx_ingress_controller_requests` and
//! `..._request_duration_seconds` give, with a bounded label set (routes, not request paths).

use std::time::Duration;

use prometheus::{HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts, Registry};

use super::routes::Matched;

/// Labels of one route; requests no route matched carry empty ones.
#[derive(Debug, Clone, Copy, Default)]
pub struct RouteLabels<'a> {
    pub ingress: &'a str,
    pub host: &'a str,
    pub path: &'a str,
    pub service: &'a str,
}

impl<'a> RouteLabels<'a> {
    pub fn of(m: &'a Matched, service: &'a str) -> RouteLabels<'a> {
        RouteLabels {
            ingress: &m.ingress,
            host: &m.host,
            path: &m.path,
            service,
        }
    }

    fn values(&self) -> [&'a str; 4] {
        [self.ingress, self.host, self.path, self.service]
    }
}

const ROUTE: [&str; 4] = ["ingress", "host", "path", "service"];

#[derive(Debug, Clone)]
pub struct IngressMetrics {
    requests: IntCounterVec,
    duration: HistogramVec,
    upstream_errors: IntCounterVec,
    pub reloads: IntCounter,
}

impl IngressMetrics {
    pub fn unregistered() -> IngressMetrics {
        let with_code = [ROUTE.as_slice(), &["code"]].concat();
        let with_reason = [ROUTE.as_slice(), &["reason"]].concat();
        IngressMetrics {
            requests: IntCounterVec::new(
                Opts::new(
                    "capstan_ingress_requests_total",
                    "Requests the ingress proxy answered, by route and status code.",
                ),
                &with_code,
            )
            .expect("valid metric"),
            duration: HistogramVec::new(
                HistogramOpts::new(
                    "capstan_ingress_request_duration_seconds",
                    "Time from a request's arrival to its response's headers, by route.",
                )
                .buckets(vec![
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                    5.0, 10.0, 30.0, 60.0,
                ]),
                &ROUTE,
            )
            .expect("valid metric"),
            upstream_errors: IntCounterVec::new(
                Opts::new(
                    "capstan_ingress_upstream_errors_total",
                    "Endpoints that could not be reached or failed a request, by route and reason (connect, timeout, response).",
                ),
                &with_reason,
            )
            .expect("valid metric"),
            reloads: IntCounter::new(
                "capstan_ingress_config_reloads_total",
                "Routing snapshots built from the cluster's objects.",
            )
            .expect("valid metric"),
        }
    }

    pub fn register(registry: &Registry) -> Result<IngressMetrics, prometheus::Error> {
        let m = IngressMetrics::unregistered();
        registry.register(Box::new(m.requests.clone()))?;
        registry.register(Box::new(m.duration.clone()))?;
        registry.register(Box::new(m.upstream_errors.clone()))?;
        registry.register(Box::new(m.reloads.clone()))?;
        Ok(m)
    }

    pub fn answered(&self, route: RouteLabels<'_>, code: u16, took: Duration) {
        let v = route.values();
        let code = code.to_string();
        self.requests
            .with_label_values(&[v[0], v[1], v[2], v[3], code.as_str()])
            .inc();
        self.duration
            .with_label_values(&v)
            .observe(took.as_secs_f64());
    }

    pub fn upstream_error(&self, route: RouteLabels<'_>, reason: &str) {
        let v = route.values();
        self.upstream_errors
            .with_label_values(&[v[0], v[1], v[2], v[3], reason])
            .inc();
    }
}
