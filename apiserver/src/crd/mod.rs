//! CustomResourceDefinitions: custom types served at run time through the same registry,
//! handlers and watch cache as the built-ins.
//!
//! - [`definition`]: what makes a CRD valid (names, versions, structural schemas, subresources,
//!   printer columns) and how a CRD becomes one [`ResourceInfo`] per served version;
//! - [`strategy`]: a custom resource's strategy — prune, default and validate against its
//!   schema, printer columns, selectable fields, status on create;
//! - [`schema`]: the structural-schema engine; [`jsonpath`]: the paths CRDs name;
//! - [`controller`]: the watch loop every API server replica runs. It accepts names (or reports
//!   the conflict in the CRD's conditions), registers and unregisters resources, keeps
//!   `status.storedVersions`, and deletes every instance before a deleted CRD goes.
//!
//! [`ResourceInfo`]: crate::registry::ResourceInfo

pub mod builtin;
pub mod controller;
pub mod conversion;
pub mod definition;
pub mod jsonpath;
pub mod schema;
pub mod strategy;

/// The finalizer a CRD carries until all its instances are deleted (Kubernetes' name).
pub const CLEANUP_FINALIZER: &str = "customresourcecleanup.apiextensions.k8s.io";
