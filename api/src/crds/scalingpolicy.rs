//! `ScalingPolicy`: Capstan's own autoscaler for one target, beyond what the HPA's resource
//! metrics can say — business hours (schedule), messages waiting (queue), a number a business
//! or monitoring system publishes (metric), and a forecast of one of those (predictive). KEDA's
//! ScaledObject is the anchor: the highest proposal of the triggers wins, then the HPA's
//! behavior block and min/max apply; minReplicas 0 scales to zero after `cooldownPeriod`
//! without activity, and back on the first activity. The controller is
//! controllers/src/scalingpolicy/.

use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscalerBehavior;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube_derive::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The duration pattern of the spec's fields (`30s`, `5m`, `1h30m`, `7d`).
const DURATION: &str = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h|d))+$";

/// What to scale, within which bounds, on which triggers.
#[derive(CustomResource, Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[kube(
    group = "capstan.dev",
    version = "v1alpha1",
    kind = "ScalingPolicy",
    namespaced,
    status = "ScalingPolicyStatus",
    shortname = "sp",
    category = "capstan",
    derive = "PartialEq",
    derive = "Default",
    printcolumn = r#"{"name":"Target","type":"string","jsonPath":".spec.scaleTargetRef.name"}"#,
    printcolumn = r#"{"name":"Min","type":"integer","jsonPath":".spec.minReplicas"}"#,
    printcolumn = r#"{"name":"Max","type":"integer","jsonPath":".spec.maxReplicas"}"#,
    printcolumn = r#"{"name":"Current","type":"integer","jsonPath":".status.currentReplicas"}"#,
    printcolumn = r#"{"name":"Desired","type":"integer","jsonPath":".status.desiredReplicas"}"#,
    printcolumn = r#"{"name":"Active","type":"string","jsonPath":".status.activeTriggers"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    crates(
        kube_core = "::kube_core",
        k8s_openapi = "::k8s_openapi",
        schemars = "::schemars",
        serde = "::serde",
        serde_json = "::serde_json"
    )
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "!has(self.minReplicas) || self.minReplicas <= self.maxReplicas", "message": "minReplicas must not exceed maxReplicas"},
]))]
pub struct ScalingPolicySpec {
    /// The object scaled, through its scale subresource (a Deployment, ReplicaSet,
    /// StatefulSet, or a custom resource serving one).
    pub scale_target_ref: ScaleTargetRef,
    /// The fewest replicas; 0 lets the target scale to zero when no trigger is active.
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub min_replicas: i32,
    /// The most replicas.
    #[schemars(range(min = 1))]
    pub max_replicas: i32,
    /// How often the triggers are read (30s when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION))]
    pub polling_interval: Option<String>,
    /// How long after the last activity the last replica is removed (300s when unset; only
    /// with minReplicas 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION))]
    pub cooldown_period: Option<String>,
    /// The HorizontalPodAutoscaler's behavior block, with the same defaults (scale-up: no
    /// stabilization, 4 pods or 100% per 15 s; scale-down: 300 s stabilization, 100% per 15 s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub behavior: Option<HorizontalPodAutoscalerBehavior>,
    /// What happens while a trigger cannot be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<Fallback>,
    /// The triggers; the highest proposal wins.
    #[schemars(length(min = 1, max = 16))]
    pub triggers: Vec<Trigger>,
}

/// The scaled object.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ScaleTargetRef {
    /// `apps/v1` when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    /// `Deployment` when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[schemars(length(min = 1))]
    pub name: String,
}

/// While a trigger's source cannot be read, its last good proposal is kept for `keepLastFor`;
/// after that the trigger proposes `replicas` when set, else nothing.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Fallback {
    /// How long the last good proposal stands in (5m when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION))]
    pub keep_last_for: Option<String>,
    /// What a trigger proposes once its last good proposal is too old.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub replicas: Option<i32>,
}

/// The kinds of trigger.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum TriggerType {
    #[default]
    Schedule,
    Queue,
    Metric,
    Predictive,
}

impl TriggerType {
    pub fn as_str(self) -> &'static str {
        match self {
            TriggerType::Schedule => "schedule",
            TriggerType::Queue => "queue",
            TriggerType::Metric => "metric",
            TriggerType::Predictive => "predictive",
        }
    }
}

/// One trigger: `type` names which of the other fields holds it.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "has(self.schedule) == (self.type == 'schedule') && has(self.queue) == (self.type == 'queue') && has(self.metric) == (self.type == 'metric') && has(self.predictive) == (self.type == 'predictive')",
     "message": "exactly the field named by type is set"},
]))]
pub struct Trigger {
    /// The trigger's name in status (and for a predictive trigger to name); `<type>-<index>`
    /// when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"))]
    pub name: Option<String>,
    #[serde(rename = "type")]
    pub type_: TriggerType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<ScheduleTrigger>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<QueueTrigger>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<MetricTrigger>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub predictive: Option<PredictiveTrigger>,
}

impl Trigger {
    /// The name status uses: the given one, else `<type>-<index>`.
    pub fn name_at(&self, index: usize) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| format!("{}-{index}", self.type_.as_str()))
    }
}

/// `replicas` from each `start` until the following `end`, in `timezone`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "self.start != self.end", "message": "start and end must differ"},
]))]
pub struct ScheduleTrigger {
    /// An IANA time zone (`Asia/Seoul`); UTC when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    /// A 5-field cron schedule (or `@daily`-style macro): when the window opens.
    #[schemars(length(min = 1))]
    pub start: String,
    /// When it closes.
    #[schemars(length(min = 1))]
    pub end: String,
    /// What the window asks for.
    #[schemars(range(min = 0))]
    pub replicas: i32,
}

/// Messages waiting, per replica.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct QueueTrigger {
    pub redis: RedisQueue,
    /// Messages one replica handles: the proposal is ceil(length / targetPerReplica).
    #[schemars(range(min = 1))]
    pub target_per_replica: i64,
    /// The length above which the trigger is active (may wake a target at zero); 0 when unset.
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub activation: i64,
}

/// A Redis list (LLEN) or stream (XLEN; with a consumer group, the entries it has not yet
/// acknowledged or read).
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "has(self.list) != has(self.stream)", "message": "exactly one of list and stream is set"},
    {"rule": "!has(self.consumerGroup) || has(self.stream)", "message": "consumerGroup needs a stream"},
]))]
pub struct RedisQueue {
    /// `host:port`; `host` alone means port 6379.
    #[schemars(length(min = 1))]
    pub address: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub list: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumer_group: Option<String>,
    /// The database number (0 when unset).
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub database: i64,
    /// The user (Redis 6 ACLs), from a Secret of the policy's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username_from: Option<SecretRef>,
    /// The password, from a Secret of the policy's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_from: Option<SecretRef>,
}

/// A key of a Secret in the policy's namespace (credentials are never written in the spec).
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SecretRef {
    pub secret_key_ref: SecretKeyRef,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    #[schemars(length(min = 1))]
    pub name: String,
    #[schemars(length(min = 1))]
    pub key: String,
}

/// A number from Prometheus or any HTTP endpoint, per replica.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {"rule": "has(self.prometheus) != has(self.http)", "message": "exactly one of prometheus and http is set"},
]))]
pub struct MetricTrigger {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prometheus: Option<PrometheusSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpSource>,
    /// What one replica handles: the proposal is ceil(value / targetPerReplica).
    #[schemars(range(min = 0.000001))]
    pub target_per_replica: f64,
    /// The value above which the trigger is active; 0 when unset.
    #[serde(default)]
    pub activation: f64,
}

/// A Prometheus instant query whose result is one sample or a scalar.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PrometheusSource {
    /// The server (`http://prometheus.monitoring:9090`).
    #[schemars(regex(pattern = r"^https?://"))]
    pub url: String,
    #[schemars(length(min = 1))]
    pub query: String,
    /// A bearer token, from a Secret of the policy's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bearer_token_from: Option<SecretRef>,
}

/// An HTTP GET whose JSON body holds the number at `jsonPath` (`{.queue.depth}` or
/// `$.queue.depth`), or whose whole body is the number.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HttpSource {
    #[schemars(regex(pattern = r"^https?://"))]
    pub url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub json_path: Option<String>,
    /// A bearer token, from a Secret of the policy's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bearer_token_from: Option<SecretRef>,
}

/// Whether a forecast scales or is only shown.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub enum PredictiveMode {
    #[default]
    ForecastAndScale,
    ForecastOnly,
}

/// A forecast of another trigger's value, `lookAhead` ahead, from its recorded history with a
/// seasonal model (additive Holt-Winters). It only ever raises the count: scale-in follows the
/// triggers' measured values, never a forecast alone.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PredictiveTrigger {
    /// The name of the queue or metric trigger whose value is forecast (its targetPerReplica
    /// turns the forecast into replicas). (Checked by the controller: a rule comparing every
    /// pair of triggers costs more than a CRD rule may.)
    #[schemars(length(min = 1))]
    pub trigger: String,
    /// How much history is kept (7d when unset; at most 8 seasons).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION))]
    pub history: Option<String>,
    /// The season's length (24h when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION))]
    pub seasonality: Option<String>,
    /// How far ahead to scale for (10m when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = DURATION))]
    pub look_ahead: Option<String>,
    #[serde(default)]
    pub mode: PredictiveMode,
}

/// What the controller last saw and did.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ScalingPolicyStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The target's replicas when last read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_replicas: Option<i32>,
    /// What the controller last set (or would set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired_replicas: Option<i32>,
    /// The active triggers' names, comma-separated (for `kubectl get`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_triggers: Option<String>,
    /// When some trigger was last active (RFC 3339): the cooldown counts from here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_active_time: Option<String>,
    /// When the controller last changed the target's scale (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale_time: Option<String>,
    /// Each trigger, in spec order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub triggers: Vec<TriggerStatus>,
    /// Ready (the policy drives its target), Active (some trigger is active), Fallback (some
    /// trigger's source cannot be read).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

/// One trigger's last reading.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TriggerStatus {
    pub name: String,
    #[serde(rename = "type")]
    pub type_: TriggerType,
    /// The value read (messages waiting, the metric, the window's replicas, the forecast).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    /// The replicas it proposes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proposal: Option<i32>,
    #[serde(default)]
    pub active: bool,
    /// When its source was last read (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_read_time: Option<String>,
    /// Why the last read failed, while it does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Predictive: the highest value forecast within lookAhead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forecast: Option<f64>,
    /// Predictive: the mean absolute error of its recent forecasts against what came.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forecast_error: Option<f64>,
    /// Predictive: the recorded history of the forecast trigger's value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history: Option<ValueHistory>,
}

/// A series of equally spaced averages: `values[i]` covers the step starting at
/// `start + i * stepSeconds`. Bounded by the trigger's history.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ValueHistory {
    /// RFC 3339.
    pub start: String,
    pub step_seconds: i64,
    pub values: Vec<f64>,
    /// Forecasts made for steps still to come, with the step they were made for: their
    /// errors become forecastError once the step is recorded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pending: Vec<PendingForecast>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PendingForecast {
    /// The index into values the forecast is for.
    pub step: i64,
    pub value: f64,
}
