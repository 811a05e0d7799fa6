"""A few calls through the official Kubernetes Python client (pip install kubernetes) against a
running Capstan: usage `python3 client_calls.py KUBECONFIG`. Exits non-zero on the first failure."""

import sys

from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException


def expect_status(code, fn, *args, **kwargs):
    try:
        fn(*args, **kwargs)
    except ApiException as e:
        assert e.status == code, f"expected {code}, got {e.status}: {e.body}"
        return
    raise AssertionError(f"expected HTTP {code}, the call succeeded")


def main(kubeconfig):
    config.load_kube_config(config_file=kubeconfig)
    core = client.CoreV1Api()
    apps = client.AppsV1Api()

    names = [ns.metadata.name for ns in core.list_namespace().items]
    assert "default" in names and "kube-system" in names, names

    start = core.list_namespaced_config_map("default").metadata.resource_version
    cm = client.V1ConfigMap(metadata=client.V1ObjectMeta(name="py", labels={"from": "python"}), data={"a": "1"})
    created = core.create_namespaced_config_map("default", cm)
    assert created.metadata.uid and created.metadata.resource_version
    expect_status(409, core.create_namespaced_config_map, "default", cm)
    expect_status(404, core.read_namespaced_config_map, "missing", "default")

    patched = core.patch_namespaced_config_map("py", "default", {"data": {"b": "2"}})
    assert patched.data == {"a": "1", "b": "2"}, patched.data
    listed = core.list_namespaced_config_map("default", label_selector="from=python")
    assert [c.metadata.name for c in listed.items] == ["py"]

    # A watch from the list's resourceVersion replays the create and the patch.
    seen = []
    w = watch.Watch()
    for event in w.stream(core.list_namespaced_config_map, "default", resource_version=start, timeout_seconds=10):
        seen.append((event["type"], event["object"].metadata.name))
        if len(seen) == 2:
            w.stop()
    assert seen == [("ADDED", "py"), ("MODIFIED", "py")], seen

    dep = client.V1Deployment(
        metadata=client.V1ObjectMeta(name="pyweb"),
        spec=client.V1DeploymentSpec(
            replicas=1,
            selector=client.V1LabelSelector(match_labels={"app": "pyweb"}),
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels={"app": "pyweb"}),
                spec=client.V1PodSpec(containers=[client.V1Container(name="c", image="localhost/busybox:1")]),
            ),
        ),
    )
    apps.create_namespaced_deployment("default", dep)
    apps.patch_namespaced_deployment_scale("pyweb", "default", {"spec": {"replicas": 4}})
    assert apps.read_namespaced_deployment_scale("pyweb", "default").spec.replicas == 4
    bad = client.V1Deployment(metadata=client.V1ObjectMeta(name="Bad_Name"), spec=dep.spec)
    expect_status(422, apps.create_namespaced_deployment, "default", bad)

    apps.delete_namespaced_deployment("pyweb", "default")
    core.delete_namespaced_config_map("py", "default")
    expect_status(404, core.read_namespaced_config_map, "py", "default")
    print("python client: all calls behaved")


if __name__ == "__main__":
    main(sys.argv[1])
