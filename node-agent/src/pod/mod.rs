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
