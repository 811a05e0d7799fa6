//! Namespace budgets: core/v1 ResourceQuota ([`resource_quota`]: validation and columns;
//! [`admission`]: the ResourceQuota admission plugin that checks and charges every create)
//! and LimitRange ([`limit_range`]: validation, defaults and the LimitRanger plugin that
//! defaults and bounds pods). What an object uses is `capstan_api::quota`, shared with the
//! resource-quota controller that keeps `status.used` true as objects go.

pub mod admission;
pub mod limit_range;
pub mod resource_quota;
