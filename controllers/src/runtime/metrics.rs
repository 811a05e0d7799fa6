//! Controller metrics, named like Kubernetes' controller-manager's.

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};

#[derive(Clone, Debug)]
pub struct Metrics {
    /// capstan_controller_reconcile_total{controller, result="success|error"}
    pub reconciles: IntCounterVec,
    /// capstan_controller_reconcile_duration_seconds{controller}
    pub duration: HistogramVec,
}

impl Metrics {
    /// New metrics, registered in `registry` (a metric already there is left as it is, so two
    /// managers may share a registry).
    pub fn register(registry: &Registry) -> Metrics {
        let reconciles = IntCounterVec::new(
            Opts::new(
                "capstan_controller_reconcile_total",
                "Reconciles by controller and result",
            ),
            &["controller", "result"],
        )
        .expect("valid metric");
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "capstan_controller_reconcile_duration_seconds",
                "Time one reconcile took",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
            &["controller"],
        )
        .expect("valid metric");
        let _ = registry.register(Box::new(reconciles.clone()));
        let _ = registry.register(Box::new(duration.clone()));
        Metrics {
            reconciles,
            duration,
        }
    }
}
