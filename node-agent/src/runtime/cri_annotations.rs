//! What CRI does not keep for Capstan rides along in annotations on the sandbox and its
//! containers: the sandbox's log directory, host-network flag, cgroup parent and process/IPC
//! namespaces; a container's image as the pod spec wrote it, its log path and its stdio.

use std::collections::HashMap;

pub(super) const LOG_DIRECTORY: &str = "io.capstan.sandbox.log-directory";
pub(super) const HOST_NETWORK: &str = "io.capstan.sandbox.host-network";
pub(super) const CGROUP_PARENT: &str = "io.capstan.sandbox.cgroup-parent";
/// The pod's process and IPC namespaces (`pid=node|pod|container,ipc=node|pod`), for its
/// containers' namespace options.
pub(super) const NAMESPACES: &str = "io.capstan.sandbox.namespaces";
pub(super) const IMAGE: &str = "io.capstan.container.image";
pub(super) const LOG_PATH: &str = "io.capstan.container.log-path";
/// The container's stdin, stdinOnce and tty (`stdin,once,tty`), for attach: CRI's status
/// does not tell them.
pub(super) const STDIO: &str = "io.capstan.container.stdio";

/// The sandbox's mode for namespace `kind` (pid or ipc), from its annotation: Kubernetes'
/// defaults (pid per container, ipc per pod) when it has none.
pub(super) fn sandbox_namespace(annotations: &HashMap<String, String>, kind: &str) -> String {
    annotations
        .get(NAMESPACES)
        .and_then(|v| {
            v.split(',')
                .find_map(|kv| kv.strip_prefix(kind)?.strip_prefix('='))
        })
        .map(str::to_string)
        .unwrap_or_else(|| if kind == "pid" { "container" } else { "pod" }.into())
}

/// Whether the container's stdio annotation names `what`.
pub(super) fn stdio(annotations: &HashMap<String, String>, what: &str) -> bool {
    annotations
        .get(STDIO)
        .is_some_and(|v| v.split(',').any(|w| w == what))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn containers_take_their_sandboxs_namespaces_and_stdio() {
        let mut a = HashMap::new();
        assert_eq!(
            sandbox_namespace(&a, "pid"),
            "container",
            "Kubernetes' defaults"
        );
        assert_eq!(sandbox_namespace(&a, "ipc"), "pod");
        a.insert(NAMESPACES.to_string(), "pid=node,ipc=pod".to_string());
        assert_eq!(sandbox_namespace(&a, "pid"), "node");
        assert_eq!(sandbox_namespace(&a, "ipc"), "pod");
        a.insert(STDIO.to_string(), "stdin,tty".to_string());
        assert!(stdio(&a, "stdin") && stdio(&a, "tty") && !stdio(&a, "once"));
    }
}
