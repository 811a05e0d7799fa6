//! The built-in resources Capstan serves (core/v1, apps/v1, batch/v1, scheduling/v1,
//! autoscaling/v2, policy/v1, storage/v1, events.k8s.io/v1, coordination, discovery, apiregistration and
//! apiextensions): names, scope, subresources and each one's [`Builtin`] strategy.

use std::sync::Arc;

use crate::registry::{Conversion, ResourceInfo, ScalePaths};
use crate::strategy::{self, Builtin, NameRule, Strategy};

/// A built-in resource: (group, version, kind), plural, short names, scope, status subresource.
fn res(
    (group, version, kind): (&'static str, &'static str, &'static str),
    plural: &'static str,
    short_names: &'static [&'static str],
    namespaced: bool,
    status: bool,
    strategy: Arc<dyn Strategy>,
) -> ResourceInfo {
    ResourceInfo {
        group: group.into(),
        version: version.into(),
        kind: kind.into(),
        plural: plural.into(),
        singular: kind.to_ascii_lowercase(),
        short_names: short_names.iter().map(|s| s.to_string()).collect(),
        categories: Vec::new(),
        namespaced,
        status,
        scale: None,
        strategic_merge: true,
        storage_version: version.into(),
        deprecation: None,
        store_prefix: format!("{plural}/"),
        terminating: false,
        list_kind: format!("{kind}List"),
        conversion: None,
        conversion_webhook: None,
        strategy,
        hooks: None,
    }
}

/// events.k8s.io/v1 Events: the core/v1 Events seen through kube-apiserver's field mapping
/// (one store prefix; see [`crate::events`]).
fn events_v1() -> ResourceInfo {
    use k8s_openapi::api::events::v1 as events;
    let mut info = res(
        ("events.k8s.io", "v1", "Event"),
        "events",
        &["ev"],
        true,
        false,
        strategy::Builtin::of::<events::Event>()
            .fields(crate::events::V1_FIELDS)
            .table(crate::table::events_v1)
            .arc(),
    );
    info.store_prefix = "events/".into();
    info.conversion = Some(Conversion {
        to_storage: crate::events::to_core,
        from_storage: crate::events::from_core,
    });
    info
}

/// The built-in resources Capstan serves, typed with k8s-openapi.
pub fn builtins() -> Vec<ResourceInfo> {
    use capstan_api::defaults;
    use k8s_openapi::api::apps::v1 as apps;
    use k8s_openapi::api::autoscaling::v2 as autoscaling;
    use k8s_openapi::api::coordination::v1 as coordination;
    use k8s_openapi::api::core::v1 as core;
    use k8s_openapi::api::discovery::v1 as discovery;
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1 as apiext;

    let all = vec!["all".to_string()];
    let mut pods = res(
        ("", "v1", "Pod"),
        "pods",
        &["po"],
        true,
        true,
        Builtin::of::<core::Pod>()
            .fields(&[
                ("spec.nodeName", "/spec/nodeName"),
                ("status.phase", "/status/phase"),
                ("spec.restartPolicy", "/spec/restartPolicy"),
                ("spec.schedulerName", "/spec/schedulerName"),
                ("spec.serviceAccountName", "/spec/serviceAccountName"),
                ("status.podIP", "/status/podIP"),
                ("status.nominatedNodeName", "/status/nominatedNodeName"),
            ])
            .validate_with(strategy::validate_pod)
            .validate_update_with(crate::ephemeral_containers::validate_update)
            .subresource_fields(&[("ephemeralcontainers", crate::ephemeral_containers::PATH)])
            .defaults(defaults::pod::pod)
            .on_create(strategy::pod_on_create)
            .table(crate::table::pods)
            .arc(),
    );
    pods.categories = all.clone();
    let mut services = res(
        ("", "v1", "Service"),
        "services",
        &["svc"],
        true,
        true,
        Builtin::of::<core::Service>()
            .names(NameRule::Label)
            .defaults(defaults::service::service)
            .on_create(strategy::service_on_create)
            .validate_with(crate::service::validate_node_ports)
            .table(crate::table::services)
            .reset_status_on_create()
            .arc(),
    );
    services.categories = all.clone();
    let mut deployments = res(
        ("apps", "v1", "Deployment"),
        "deployments",
        &["deploy"],
        true,
        true,
        Builtin::of::<apps::Deployment>()
            .validate_with(strategy::validate_workload)
            .defaults(defaults::apps::deployment)
            .table(crate::table::deployments)
            .generation()
            .reset_status_on_create()
            .arc(),
    );
    deployments.categories = all.clone();
    deployments.scale = Some(ScalePaths::workload());
    let mut replicasets = res(
        ("apps", "v1", "ReplicaSet"),
        "replicasets",
        &["rs"],
        true,
        true,
        Builtin::of::<apps::ReplicaSet>()
            .validate_with(strategy::validate_workload)
            .defaults(defaults::apps::replica_set)
            .table(crate::table::replicasets)
            .generation()
            .reset_status_on_create()
            .arc(),
    );
    replicasets.categories = all.clone();
    replicasets.scale = Some(ScalePaths::workload());
    let mut daemon_sets = res(
        ("apps", "v1", "DaemonSet"),
        "daemonsets",
        &["ds"],
        true,
        true,
        Builtin::of::<apps::DaemonSet>()
            .defaults(defaults::apps::daemon_set)
            .on_create(crate::daemon_set::on_create)
            .prepare_update(crate::daemon_set::prepare_update)
            .validate_with(crate::daemon_set::validate)
            .validate_update_with(crate::daemon_set::validate_update)
            .table(crate::daemon_set::table)
            .generation()
            .reset_status_on_create()
            .arc(),
    );
    daemon_sets.categories = all.clone();
    let mut stateful_sets = res(
        ("apps", "v1", "StatefulSet"),
        "statefulsets",
        &["sts"],
        true,
        true,
        Builtin::of::<apps::StatefulSet>()
            .defaults(defaults::apps::stateful_set)
            .validate_with(crate::stateful_set::validate)
            .validate_update_with(crate::stateful_set::validate_update)
            .table(crate::stateful_set::table)
            .generation()
            .reset_status_on_create()
            .arc(),
    );
    stateful_sets.categories = all.clone();
    stateful_sets.scale = Some(ScalePaths::workload());
    let controller_revisions = res(
        ("apps", "v1", "ControllerRevision"),
        "controllerrevisions",
        &[],
        true,
        false,
        Builtin::of::<apps::ControllerRevision>()
            .validate_with(crate::controller_revision::validate)
            .validate_update_with(crate::controller_revision::validate_update)
            .table(crate::controller_revision::table)
            .arc(),
    );
    let mut hpa = res(
        ("autoscaling", "v2", "HorizontalPodAutoscaler"),
        "horizontalpodautoscalers",
        &["hpa"],
        true,
        true,
        Builtin::of::<autoscaling::HorizontalPodAutoscaler>()
            .defaults(defaults::autoscaling::horizontal_pod_autoscaler)
            .validate_with(crate::hpa::validate)
            .table(crate::table::hpas)
            .generation()
            .reset_status_on_create()
            .arc(),
    );
    hpa.categories = all.clone();
    let pdb = res(
        ("policy", "v1", "PodDisruptionBudget"),
        "poddisruptionbudgets",
        &["pdb"],
        true,
        true,
        Builtin::of::<k8s_openapi::api::policy::v1::PodDisruptionBudget>()
            .validate_with(crate::pod_disruption_budget::validate)
            .table(crate::table::pod_disruption_budgets)
            .generation()
            .reset_status_on_create()
            .arc(),
    );
    let mut jobs = res(
        ("batch", "v1", "Job"),
        "jobs",
        &[],
        true,
        true,
        Builtin::of::<k8s_openapi::api::batch::v1::Job>()
            .defaults(defaults::batch::job)
            .on_create(crate::batch::job_on_create)
            .validate_with(crate::batch::validate_job)
            .validate_update_with(crate::batch::validate_job_update)
            .table(crate::batch::jobs)
            .generation()
            .reset_status_on_create()
            .arc(),
    );
    jobs.categories = all.clone();
    let mut cron_jobs = res(
        ("batch", "v1", "CronJob"),
        "cronjobs",
        &["cj"],
        true,
        true,
        Builtin::of::<k8s_openapi::api::batch::v1::CronJob>()
            .defaults(defaults::batch::cron_job)
            .validate_with(crate::batch::validate_cron_job)
            .table(crate::batch::cron_jobs)
            .generation()
            .reset_status_on_create()
            .arc(),
    );
    cron_jobs.categories = all.clone();

    let priority_classes = res(
        (crate::priority::GROUP, "v1", "PriorityClass"),
        "priorityclasses",
        &["pc"],
        false,
        false,
        Builtin::of::<k8s_openapi::api::scheduling::v1::PriorityClass>()
            .defaults(crate::priority::defaults)
            .validate_with(crate::priority::validate)
            .validate_update_with(crate::priority::validate_update)
            .table(crate::priority::table)
            .arc(),
    );

    vec![
        jobs,
        cron_jobs,
        priority_classes,
        res(
            ("", "v1", "Namespace"),
            "namespaces",
            &["ns"],
            false,
            true,
            Builtin::of::<core::Namespace>()
                .names(NameRule::Label)
                .fields(&[("status.phase", "/status/phase")])
                .defaults(defaults::core::namespace)
                .on_create(strategy::namespace_on_create)
                .forbid_delete(strategy::namespace_forbid_delete)
                .no_delete_collection()
                .table(crate::table::namespaces)
                .arc(),
        ),
        pods,
        services,
        res(
            ("", "v1", "Endpoints"),
            "endpoints",
            &["ep"],
            true,
            false,
            Builtin::of::<core::Endpoints>()
                .defaults(defaults::service::endpoints)
                .table(crate::table::endpoints)
                .arc(),
        ),
        res(
            ("", "v1", "Node"),
            "nodes",
            &["no"],
            false,
            true,
            Builtin::of::<core::Node>()
                .fields(&[("spec.unschedulable", "/spec/unschedulable")])
                .validate_with(crate::node::validate)
                .validate_update_with(crate::node::validate_update)
                .defaults(defaults::core::node)
                .table(crate::table::nodes)
                .arc(),
        ),
        res(
            ("", "v1", "ConfigMap"),
            "configmaps",
            &["cm"],
            true,
            false,
            Builtin::of::<core::ConfigMap>()
                .validate_with(crate::configdata::validate_configmap)
                .table(crate::table::configmaps)
                .arc(),
        ),
        res(
            ("", "v1", "Secret"),
            "secrets",
            &[],
            true,
            false,
            Builtin::of::<core::Secret>()
                .fields(&[("type", "/type")])
                .validate_with(crate::configdata::validate_secret)
                .defaults(defaults::core::secret)
                .on_update(crate::configdata::merge_string_data)
                .table(crate::table::secrets)
                .arc(),
        ),
        res(
            ("", "v1", "Event"),
            "events",
            &["ev"],
            true,
            false,
            Builtin::of::<core::Event>()
                .fields(crate::events::CORE_FIELDS)
                .table(crate::table::events)
                .arc(),
        ),
        res(
            ("", "v1", "ResourceQuota"),
            "resourcequotas",
            &["quota"],
            true,
            true,
            Builtin::of::<core::ResourceQuota>()
                .validate_with(crate::quota::resource_quota::validate)
                .table(crate::quota::resource_quota::table)
                .reset_status_on_create()
                .arc(),
        ),
        res(
            ("", "v1", "LimitRange"),
            "limitranges",
            &["limits"],
            true,
            false,
            Builtin::of::<core::LimitRange>()
                .defaults(crate::quota::limit_range::defaults)
                .validate_with(crate::quota::limit_range::validate)
                .table(crate::quota::limit_range::table)
                .arc(),
        ),
        res(
            ("", "v1", "ServiceAccount"),
            "serviceaccounts",
            &["sa"],
            true,
            false,
            Builtin::of::<core::ServiceAccount>()
                .table(crate::table::serviceaccounts)
                .arc(),
        ),
        deployments,
        replicasets,
        daemon_sets,
        stateful_sets,
        controller_revisions,
        res(
            ("", "v1", "PersistentVolumeClaim"),
            "persistentvolumeclaims",
            &["pvc"],
            true,
            true,
            Builtin::of::<core::PersistentVolumeClaim>()
                .defaults(defaults::core::persistent_volume_claim)
                .validate_with(crate::volumes::claim::validate)
                .validate_update_with(crate::volumes::claim::validate_update)
                .table(crate::volumes::claim::table)
                .reset_status_on_create()
                .arc(),
        ),
        res(
            ("", "v1", "PersistentVolume"),
            "persistentvolumes",
            &["pv"],
            false,
            true,
            Builtin::of::<core::PersistentVolume>()
                .defaults(defaults::core::persistent_volume)
                .on_create(crate::volumes::persistent_volume::on_create)
                .validate_with(crate::volumes::persistent_volume::validate)
                .validate_update_with(crate::volumes::persistent_volume::validate_update)
                .table(crate::volumes::persistent_volume::table)
                .reset_status_on_create()
                .arc(),
        ),
        res(
            (crate::volumes::storage_class::GROUP, "v1", "StorageClass"),
            "storageclasses",
            &["sc"],
            false,
            false,
            Builtin::of::<k8s_openapi::api::storage::v1::StorageClass>()
                .defaults(crate::volumes::storage_class::defaults)
                .validate_with(crate::volumes::storage_class::validate)
                .validate_update_with(crate::volumes::storage_class::validate_update)
                .table(crate::volumes::storage_class::table)
                .arc(),
        ),
        res(
            (crate::ingress::GROUP, "v1", "Ingress"),
            "ingresses",
            &["ing"],
            true,
            true,
            Builtin::of::<k8s_openapi::api::networking::v1::Ingress>()
                .validate_with(crate::ingress::validate)
                .table(crate::ingress::ingresses)
                .generation()
                .reset_status_on_create()
                .arc(),
        ),
        res(
            (crate::ingress::GROUP, "v1", "IngressClass"),
            "ingressclasses",
            &[],
            false,
            false,
            Builtin::of::<k8s_openapi::api::networking::v1::IngressClass>()
                .validate_with(crate::ingress::validate_class)
                .validate_update_with(crate::ingress::validate_class_update)
                .table(crate::ingress::classes)
                .generation()
                .arc(),
        ),
        hpa,
        pdb,
        events_v1(),
        res(
            ("coordination.k8s.io", "v1", "Lease"),
            "leases",
            &[],
            true,
            false,
            Builtin::of::<coordination::Lease>()
                .table(crate::table::leases)
                .arc(),
        ),
        res(
            ("discovery.k8s.io", "v1", "EndpointSlice"),
            "endpointslices",
            &[],
            true,
            false,
            Builtin::of::<discovery::EndpointSlice>()
                .defaults(defaults::service::endpoint_slice)
                .table(crate::table::endpointslices)
                .arc(),
        ),
        res(
            ("apiregistration.k8s.io", "v1", "APIService"),
            "apiservices",
            &[],
            false,
            true,
            Builtin::of::<k8s_openapi::kube_aggregator::pkg::apis::apiregistration::v1::APIService>()
                .names(NameRule::VersionDotGroup)
                .validate_with(crate::apiservice::validate)
                .defaults(defaults::apiregistration::api_service)
                .table(crate::table::apiservices)
                .arc(),
        ),
        res(
            ("apiextensions.k8s.io", "v1", "CustomResourceDefinition"),
            "customresourcedefinitions",
            &["crd", "crds"],
            false,
            true,
            Builtin::of::<apiext::CustomResourceDefinition>()
                .validate_with(crate::crd::definition::validate)
                .generation()
                .validate_update_with(crate::crd::definition::validate_update)
                .on_create(crate::crd::definition::on_create)
                .on_update(crate::crd::definition::default_spec)
                .reset_status_on_create()
                .table(crate::table::crds)
                .arc(),
        ),
        res(
            (crate::admission_policy::GROUP, "v1", "ValidatingAdmissionPolicy"),
            "validatingadmissionpolicies",
            &[],
            false,
            true,
            Builtin::of::<k8s_openapi::api::admissionregistration::v1::ValidatingAdmissionPolicy>()
                .validate_with(crate::admission_policy::policy::validate_policy)
                .generation()
                .reset_status_on_create()
                .arc(),
        ),
        res(
            (crate::admission_policy::GROUP, "v1", "ValidatingAdmissionPolicyBinding"),
            "validatingadmissionpolicybindings",
            &[],
            false,
            false,
            Builtin::of::<k8s_openapi::api::admissionregistration::v1::ValidatingAdmissionPolicyBinding>()
                .validate_with(crate::admission_policy::policy::validate_binding)
                .arc(),
        ),
        res(
            (crate::admission_policy::GROUP, "v1", "ValidatingWebhookConfiguration"),
            "validatingwebhookconfigurations",
            &[],
            false,
            false,
            Builtin::of::<k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration>()
                .defaults(crate::webhook::config::defaults_validating)
                .validate_with(crate::webhook::config::validate_validating)
                .table(crate::table::webhook_configurations)
                .arc(),
        ),
        res(
            (crate::admission_policy::GROUP, "v1", "MutatingWebhookConfiguration"),
            "mutatingwebhookconfigurations",
            &[],
            false,
            false,
            Builtin::of::<k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration>()
                .defaults(crate::webhook::config::defaults_mutating)
                .validate_with(crate::webhook::config::validate_mutating)
                .table(crate::table::webhook_configurations)
                .arc(),
        ),
        res(
            (crate::certificates::GROUP, "v1", "CertificateSigningRequest"),
            "certificatesigningrequests",
            &["csr"],
            false,
            true,
            Builtin::of::<k8s_openapi::api::certificates::v1::CertificateSigningRequest>()
                .names(NameRule::PathSegment)
                .validate_with(crate::certificates::validate)
                .validate_update_with(crate::certificates::validate_update)
                .on_create(crate::certificates::on_create)
                .reset_status_on_create()
                .subresource_fields(&[("approval", crate::certificates::APPROVAL)])
                .table(crate::certificates::columns)
                .arc(),
        ),
    ]
    .into_iter()
    .chain(rbac())
    .collect()
}

/// rbac.authorization.k8s.io/v1: Roles, ClusterRoles and their bindings (names are path
/// segments: `system:node`).
fn rbac() -> Vec<ResourceInfo> {
    use crate::auth::rbac::{table, validation};
    use k8s_openapi::api::rbac::v1 as rbac;
    let g = crate::auth::rbac::GROUP;
    vec![
        res(
            (g, "v1", "Role"),
            "roles",
            &[],
            true,
            false,
            Builtin::of::<rbac::Role>()
                .names(NameRule::PathSegment)
                .validate_with(validation::role)
                .table(table::roles)
                .arc(),
        ),
        res(
            (g, "v1", "ClusterRole"),
            "clusterroles",
            &[],
            false,
            false,
            Builtin::of::<rbac::ClusterRole>()
                .names(NameRule::PathSegment)
                .validate_with(validation::cluster_role)
                .table(table::roles)
                .arc(),
        ),
        res(
            (g, "v1", "RoleBinding"),
            "rolebindings",
            &[],
            true,
            false,
            Builtin::of::<rbac::RoleBinding>()
                .names(NameRule::PathSegment)
                .validate_with(validation::role_binding)
                .validate_update_with(validation::binding_update)
                .table(table::bindings)
                .arc(),
        ),
        res(
            (g, "v1", "ClusterRoleBinding"),
            "clusterrolebindings",
            &[],
            false,
            false,
            Builtin::of::<rbac::ClusterRoleBinding>()
                .names(NameRule::PathSegment)
                .validate_with(validation::cluster_role_binding)
                .validate_update_with(validation::binding_update)
                .table(table::bindings)
                .arc(),
        ),
    ]
}
