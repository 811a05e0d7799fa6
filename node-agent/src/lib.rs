//! Capstan's node agent: a kubelet. Start at [`agent::Agent`]: it registers the node
//! ([`node`]), watches the pods bound to it, and gives each a worker ([`pod::worker`]) that
//! plans ([`pod::plan`]) and reports ([`pod::status`]) through a container runtime
//! ([`runtime`]: containerd's CRI, or plain processes), recording kubelet's Events on the way
//! ([`events`]). `kubectl logs`, `kubectl exec`, `kubectl attach` ([`attach`]) and
//! `kubectl port-forward` ([`portforward`] over [`spdy`])
//! reach it through [`server`]. [`proxy`] programs Services into nftables (kube-proxy); cluster
//! DNS (the zone from Services and EndpointSlices, the UDP/TCP server, forwarding, pods'
//! resolv.conf) is [`dns`]. [`stats`] samples the node's and pods' resource use for
//! `/stats/summary` (metrics.k8s.io, `kubectl top`, autoscaling).

pub mod agent;
pub mod attach;
pub mod cni_config;
pub mod conditions;
pub mod containerd;
pub mod dns;
pub mod events;
pub mod exec_ws;
pub mod ingress;
pub mod local_volumes;
pub mod logs;
pub mod node;
pub mod oom;
pub mod pause_image;
pub mod pod;
pub mod pod_egress;
pub mod pod_routes;
pub mod portforward;
pub mod proxy;
pub mod runtime;
pub mod server;
pub mod server_auth;
pub mod server_tls;
pub mod spdy;
pub mod stats;

pub use agent::Agent;
pub use node::NodeConfig;
