//! One pod on this node: [`plan`] (what to do next, pure), [`status`] (what to report, pure),
//! [`env`] (environment and command line), [`worker`] (applies plans, writes statuses).

pub mod env;
pub mod plan;
pub mod probe;
pub mod resources;
pub mod service_env;
pub mod status;
pub mod volumes;
pub mod worker;

/// An ephemeral container as the container it is run as (the same fields, less the target).
pub fn as_container(
    e: &k8s_openapi::api::core::v1::EphemeralContainer,
) -> Option<k8s_openapi::api::core::v1::Container> {
    serde_json::to_value(e)
        .and_then(serde_json::from_value)
        .ok()
}
