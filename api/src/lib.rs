//! Capstan's API types: the Kubernetes built-ins (re-exported from k8s-openapi), Capstan's own
//! custom resources ([`crds`]), label and field [`selectors`], the [`validation`] rules for
//! names, labels and annotations, and Kubernetes' [`defaults`] for the built-ins. No I/O, no async:
//! the API server, the controllers and the node agent all build on this crate.

pub mod crds;
pub mod cron;
pub mod defaults;
pub mod duration;
pub mod quantity;
pub mod quota;
pub mod selectors;
pub mod validation;

pub use k8s_openapi;
pub use selectors::{Selector, SelectorError};
