"""The real test control plane works: API server, RBAC, TokenRequest, GC, scheduler + node agent, tools, Prometheus."""

from __future__ import annotations

import base64
import functools
import json
import socket
import textwrap
import time
from pathlib import Path
from typing import Any

import kubernetes
import pytest
from kubernetes.client import ApiException

from devcluster.binaries import pinned_versions
from devcluster.controlplane import SA_ISSUER, ControlPlane
from devcluster.node_agent import NodeAgent
from devcluster.procs import free_port, wait_until
from devcluster.prometheus import PrometheusServer

pytestmark = pytest.mark.integration


def core(cluster: ControlPlane) -> kubernetes.client.CoreV1Api:
    return kubernetes.client.CoreV1Api(cluster.client)


def jwt_claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    claims: dict[str, Any] = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return claims


def make_pod(name: str, script: str, **container: Any) -> dict[str, Any]:
    """A pod running `python -c script`, with POD_NAME/POD_IP from the downward API."""
    env = [
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        *container.pop("env", []),
    ]
    spec: dict[str, Any] = {
        "name": "main",
        "image": "kube-sft/test:unused",
        "command": ["python", "-c", textwrap.dedent(script)],
        "env": env,
        **container,
    }
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {"restartPolicy": "Never", "containers": [spec]},
    }


def wait_phase(cluster: ControlPlane, namespace: str, name: str, phases: set[str], timeout: float = 60) -> Any:
    v1 = core(cluster)

    def check() -> Any:
        pod = v1.read_namespaced_pod(name, namespace)
        return pod if pod.status.phase in phases else None

    return wait_until(check, timeout, f"pod {namespace}/{name} to reach {sorted(phases)}", interval=0.2)


def terminated(pod: Any) -> Any:
    return pod.status.container_statuses[0].state.terminated


# ----- API server, RBAC, tokens ---------------------------------------------------------------


def test_apiserver_is_healthy_and_pinned(kube_cluster: ControlPlane) -> None:
    assert kube_cluster.started_in < 60, f"cluster took {kube_cluster.started_in:.1f}s to start"
    readyz = kube_cluster.kubectl("get", "--raw", "/readyz").stdout
    assert readyz.strip() == "ok"
    version = kubernetes.client.VersionApi(kube_cluster.client).get_code()
    expected = pinned_versions()["K8S_VERSION"]
    if not Path(kube_cluster.binaries.kube_apiserver).is_relative_to(Path(kube_cluster.binaries.kubectl).parent):
        pytest.skip("kube-apiserver comes from KUBEBUILDER_ASSETS; its version is the user's")
    assert version.git_version == expected
    nodes_api = kube_cluster.kubectl("api-resources", "-o", "name").stdout.split()
    assert "serviceaccounts" in nodes_api and "leases.coordination.k8s.io" in nodes_api


def test_rbac_is_enforced_for_a_fresh_service_account(kube_cluster: ControlPlane, namespace: str) -> None:
    v1 = core(kube_cluster)
    v1.create_namespaced_service_account(namespace, {"metadata": {"name": "probe"}})
    kubeconfig = kube_cluster.service_account_kubeconfig(namespace, "probe")
    sa_v1 = kubernetes.client.CoreV1Api(kube_cluster.api_client(kubeconfig))

    with pytest.raises(ApiException) as denied:
        sa_v1.list_namespaced_secret(namespace)
    assert denied.value.status == 403
    can_i = kube_cluster.kubectl(
        "auth", "can-i", "list", "secrets", "-n", namespace, kubeconfig=kubeconfig, check=False
    )
    assert (can_i.returncode, can_i.stdout.strip()) == (1, "no")

    rbac = kubernetes.client.RbacAuthorizationV1Api(kube_cluster.client)
    rule = {"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]}
    rbac.create_namespaced_role(namespace, {"metadata": {"name": "list-pods"}, "rules": [rule]})
    binding = {
        "metadata": {"name": "probe-list-pods"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "list-pods"},
        "subjects": [{"kind": "ServiceAccount", "name": "probe", "namespace": namespace}],
    }
    rbac.create_namespaced_role_binding(namespace, binding)

    def allowed() -> bool:
        result = kube_cluster.kubectl(
            "auth", "can-i", "list", "pods", "-n", namespace, kubeconfig=kubeconfig, check=False
        )
        return result.stdout.strip() == "yes"

    wait_until(allowed, 10, "the RoleBinding to take effect")
    assert sa_v1.list_namespaced_pod(namespace).items == []
    still_no = kube_cluster.kubectl(
        "auth", "can-i", "list", "secrets", "-n", namespace, kubeconfig=kubeconfig, check=False
    )
    assert still_no.stdout.strip() == "no"


def test_token_request_issues_verifiable_tokens(kube_cluster: ControlPlane, namespace: str) -> None:
    token = kube_cluster.service_account_token(namespace, "default", expiration_seconds=600)
    claims = jwt_claims(token)
    assert claims["iss"] == SA_ISSUER
    assert claims["sub"] == f"system:serviceaccount:{namespace}:default"
    assert 0 < claims["exp"] - time.time() <= 610

    review = kubernetes.client.AuthenticationV1Api(kube_cluster.client).create_token_review(
        {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": token}}
    )
    assert review.status.authenticated is True
    assert review.status.user.username == f"system:serviceaccount:{namespace}:default"


def test_garbage_collector_deletes_dependents(kube_cluster: ControlPlane, namespace: str) -> None:
    v1 = core(kube_cluster)
    owner = v1.create_namespaced_config_map(namespace, {"metadata": {"name": "owner"}, "data": {"a": "1"}})
    reference = {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner.metadata.uid}
    v1.create_namespaced_config_map(namespace, {"metadata": {"name": "dependent", "ownerReferences": [reference]}})
    v1.delete_namespaced_config_map("owner", namespace, propagation_policy="Background")

    def collected() -> bool:
        try:
            v1.read_namespaced_config_map("dependent", namespace)
        except ApiException as exc:
            return exc.status == 404
        return False

    wait_until(collected, 60, "the garbage collector to delete the dependent ConfigMap", interval=0.3)


# ----- scheduler + node agent -----------------------------------------------------------------

IDENTITY_SCRIPT = """
    import json, os, sys
    import kubernetes
    from kubernetes.client import AuthenticationV1Api
    sa = os.environ["KUBE_SFT_SERVICEACCOUNT_DIR"]
    if sa == "/var/run/secrets/kubernetes.io/serviceaccount":  # real mounts: the unmodified loader
        kubernetes.config.load_incluster_config()
    else:
        kubernetes.config.incluster_config.InClusterConfigLoader(
            token_filename=os.path.join(sa, "token"), cert_filename=os.path.join(sa, "ca.crt")).load_and_set()
    review = AuthenticationV1Api().create_self_subject_review(
        {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"})
    message = {"user": review.status.user_info.username, "pod": os.environ["POD_NAME"],
               "ip": os.environ["POD_IP"], "namespace": open(os.path.join(sa, "namespace")).read()}
    with open(sys.argv[1], "w") as f:
        json.dump(message, f)
    print("trained", flush=True)
"""


def test_scheduler_binds_gpu_pod_and_agent_runs_it(
    kube_cluster: ControlPlane, node_agent: NodeAgent, namespace: str
) -> None:
    pod = make_pod(
        "gpu-pod",
        IDENTITY_SCRIPT,
        args=["/dev/termination-log"],
        resources={"limits": {"nvidia.com/gpu": "1", "cpu": "1"}},
    )
    core(kube_cluster).create_namespaced_pod(namespace, pod)
    done = wait_phase(kube_cluster, namespace, "gpu-pod", {"Succeeded", "Failed"})

    assert done.spec.node_name == node_agent.node_name
    assert done.status.phase == "Succeeded", node_agent.logs(namespace, "gpu-pod")
    state = terminated(done)
    assert state.exit_code == 0 and state.reason == "Completed"
    message = json.loads(state.message)
    assert message == {
        "user": f"system:serviceaccount:{namespace}:default",
        "pod": "gpu-pod",
        "ip": done.status.pod_ip,
        "namespace": namespace,
    }
    assert done.status.pod_ip.startswith(node_agent.ips.prefix) and done.status.host_ip == node_agent.host_ip
    assert "trained" in node_agent.logs(namespace, "gpu-pod")
    assert kube_cluster.kubectl("logs", "-n", namespace, "gpu-pod").stdout == "trained\n"


def test_failing_command_ends_failed_with_exit_code(
    kube_cluster: ControlPlane, node_agent: NodeAgent, namespace: str
) -> None:
    script = """
        import sys
        open("/tmp/kube-sft-reason", "w").write("bad data path")
        sys.exit(3)
    """
    pod = make_pod("failing", script, terminationMessagePath="/tmp/kube-sft-reason")
    core(kube_cluster).create_namespaced_pod(namespace, pod)
    done = wait_phase(kube_cluster, namespace, "failing", {"Succeeded", "Failed"})
    assert done.status.phase == "Failed"
    state = terminated(done)
    assert (state.exit_code, state.reason, state.message) == (3, "Error", "bad data path")


def test_deleting_a_pod_kills_its_process(kube_cluster: ControlPlane, node_agent: NodeAgent, namespace: str) -> None:
    v1 = core(kube_cluster)
    v1.create_namespaced_pod(namespace, make_pod("sleeper", "import time; time.sleep(600)"))
    wait_phase(kube_cluster, namespace, "sleeper", {"Running"})
    run = node_agent.find_run(namespace, "sleeper")
    assert run is not None and run.proc is not None and run.proc.poll() is None
    v1.delete_namespaced_pod("sleeper", namespace, grace_period_seconds=5)

    def gone() -> bool:
        try:
            v1.read_namespaced_pod("sleeper", namespace)
        except ApiException as exc:
            return exc.status == 404
        return False

    wait_until(gone, 30, "the pod to be removed after its process was killed", interval=0.2)
    assert run.proc.poll() is not None


def test_master_addr_resolves_to_rank0_pod_ip(
    kube_cluster: ControlPlane, node_agent: NodeAgent, namespace: str
) -> None:
    """Workers that point MASTER_ADDR at `<job>-node-0.<svc>` get rank 0's pod IP (there is no DNS)."""
    v1 = core(kube_cluster)
    script = """
        import json, os, socket, sys
        name = os.environ["NAME"]
        resolved = socket.gethostbyname(name) if os.path.exists("/etc/hosts") else None
        open(sys.argv[1], "w").write(json.dumps({"master": os.environ["MASTER_ADDR"], "resolved": resolved}))
    """
    for rank in (1, 0):  # the worker first: it must get the address rank 0 will have
        pod = make_pod(
            f"job-node-{rank}",
            script,
            args=["/dev/termination-log"],
            env=[
                {"name": "MASTER_ADDR", "value": f"job-node-0.job.{namespace}.svc"},
                {"name": "NAME", "value": f"job-node-0.job.{namespace}.svc.cluster.local"},
            ],
        )
        pod["spec"].update({"hostname": f"job-node-{rank}", "subdomain": "job"})
        v1.create_namespaced_pod(namespace, pod)
    rank0 = wait_phase(kube_cluster, namespace, "job-node-0", {"Succeeded", "Failed"})
    rank1 = wait_phase(kube_cluster, namespace, "job-node-1", {"Succeeded", "Failed"})
    ip0 = rank0.status.pod_ip
    assert json.loads(terminated(rank0).message)["master"] == ip0
    assert json.loads(terminated(rank1).message)["master"] == ip0
    if node_agent.real_mounts:  # each pod's /etc/hosts names the pods of its namespace
        assert json.loads(terminated(rank1).message)["resolved"] == ip0
    assert rank1.status.pod_ip != rank0.status.pod_ip


# ----- tools and Prometheus -------------------------------------------------------------------


def test_helm_and_kubectl_binaries_run(kube_cluster: ControlPlane) -> None:
    helm = kube_cluster.helm("version", "--short").stdout
    assert helm.startswith("v")
    kubectl = json.loads(kube_cluster.kubectl("version", "--client", "-o", "json").stdout)
    assert kubectl["clientVersion"]["gitVersion"].startswith("v1.")
    assert kube_cluster.helm("list", "-A").returncode == 0


EXPORTER_SCRIPT = """
    import os, sys, time
    from prometheus_client import Counter, start_http_server
    steps = Counter("kube_sft_probe_steps", "probe steps")
    start_http_server(int(sys.argv[1]), addr=os.environ["POD_IP"])
    while True:
        steps.inc()
        time.sleep(0.2)
"""

RULES = """
groups:
  - name: probe
    rules:
      - alert: ProbeStalled
        expr: rate(kube_sft_probe_steps_total[1m]) == 0
        for: 5m
        labels: {severity: warning}
        annotations: {summary: the probe stopped counting}
"""


def test_prometheus_scrapes_a_pod_and_answers_queries(
    kube_cluster: ControlPlane, node_agent: NodeAgent, prometheus: PrometheusServer, namespace: str, tmp_path: Path
) -> None:
    port = free_port()
    core(kube_cluster).create_namespaced_pod(namespace, make_pod("exporter", EXPORTER_SCRIPT, args=[str(port)]))
    pod = wait_phase(kube_cluster, namespace, "exporter", {"Running"})
    prometheus.set_targets("probe", [f"{pod.status.pod_ip}:{port}"])

    result = prometheus.wait_for('kube_sft_probe_steps_total{job="probe"} > 0')
    assert result[0]["metric"]["instance"] == f"{pod.status.pod_ip}:{port}"
    assert prometheus.wait_for('up{job="probe"} == 1')

    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    assert "SUCCESS" in PrometheusServer.check_rules(rules)
    prometheus.set_rule_files([rules])
    with pytest.raises(ValueError):
        prometheus.query("rate(")


def test_restart_policy_on_failure_restarts_in_place(
    kube_cluster: ControlPlane, node_agent: NodeAgent, namespace: str
) -> None:
    script = """
        import os, sys
        if not os.path.exists("attempted"):
            open("attempted", "w").close()
            sys.exit(7)
    """
    pod = make_pod("flaky", script)
    pod["spec"]["restartPolicy"] = "OnFailure"
    core(kube_cluster).create_namespaced_pod(namespace, pod)
    done = wait_phase(kube_cluster, namespace, "flaky", {"Succeeded", "Failed"})
    assert done.status.phase == "Succeeded"
    status = done.status.container_statuses[0]
    assert status.restart_count == 1
    assert status.last_state.terminated.exit_code == 7


def test_config_map_secret_and_volume_paths_reach_the_process(
    kube_cluster: ControlPlane, node_agent: NodeAgent, namespace: str
) -> None:
    v1 = core(kube_cluster)
    v1.create_namespaced_config_map(namespace, {"metadata": {"name": "cfg"}, "data": {"config.yaml": "max_steps: 3\n"}})
    v1.create_namespaced_secret(namespace, {"metadata": {"name": "creds"}, "stringData": {"token": "s3cr3t"}})
    claim = {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "1Gi"}}}
    v1.create_namespaced_persistent_volume_claim(namespace, {"metadata": {"name": "checkpoints"}, "spec": claim})
    script = """
        import json, os, sys
        config = open(sys.argv[1]).read()
        out = {"config": config, "token": os.environ["HF_TOKEN"], "mode": os.environ["MODE"],
               "ckpt": os.environ["CKPT"]}
        os.makedirs(os.environ["CKPT"], exist_ok=True)
        open(os.path.join(os.environ["CKPT"], "marker"), "w").write("x")
        open("/dev/termination-log", "w").write(json.dumps(out))
    """
    pod = make_pod(
        "mounts",
        script,
        args=["/etc/sft/config.yaml"],
        env=[
            {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}}},
            {"name": "CKPT", "value": "/checkpoints/run-1"},
        ],
        envFrom=[{"configMapRef": {"name": "extra", "optional": True}, "prefix": "X_"}],
        volumeMounts=[{"name": "cfg", "mountPath": "/etc/sft"}, {"name": "ckpt", "mountPath": "/checkpoints"}],
    )
    pod["spec"]["containers"][0]["env"].append({"name": "MODE", "value": "$(POD_NAME)-train"})
    pod["spec"]["volumes"] = [
        {"name": "cfg", "configMap": {"name": "cfg"}},
        {"name": "ckpt", "persistentVolumeClaim": {"claimName": "checkpoints"}},
    ]
    v1.create_namespaced_pod(namespace, pod)
    done = wait_phase(kube_cluster, namespace, "mounts", {"Succeeded", "Failed"})
    assert done.status.phase == "Succeeded", node_agent.logs(namespace, "mounts")
    out = json.loads(terminated(done).message)
    local_checkpoints = node_agent.workdir / "pvc" / namespace / "checkpoints"
    ckpt = "/checkpoints/run-1" if node_agent.real_mounts else f"{local_checkpoints}/run-1"
    expected = {"config": "max_steps: 3\n", "token": "s3cr3t", "mode": "mounts-train", "ckpt": ckpt}
    assert out == expected
    assert (local_checkpoints / "run-1" / "marker").exists()
    bound = v1.read_namespaced_persistent_volume_claim("checkpoints", namespace)
    assert bound.status.phase == "Bound" and bound.spec.storage_class_name == "kube-sft-local"


def test_secret_projected_and_downward_volumes_hold_their_files(
    kube_cluster: ControlPlane, node_agent: NodeAgent, namespace: str
) -> None:
    """A secret volume (its Secret named by `secretName`, items renamed), a projected volume (a Secret
    named by `name`, a ConfigMap, the downward API and a bound service-account token) and a downwardAPI
    volume: each file where the kubelet would put it."""
    v1 = core(kube_cluster)
    v1.create_namespaced_config_map(namespace, {"metadata": {"name": "settings"}, "data": {"mode": "fast"}})
    v1.create_namespaced_secret(namespace, {"metadata": {"name": "keys"}, "stringData": {"a": "alpha", "b": "beta"}})
    script = """
        import json, os, sys
        def tree(root):
            return {os.path.relpath(os.path.join(d, f), root): open(os.path.join(d, f)).read()
                    for d, _, files in os.walk(root) for f in files if not f.startswith("..")}
        out = {root: tree(root) for root in sys.argv[1:]}
        token = out[sys.argv[2]].pop("sa/token")
        out["token_parts"] = len(token.split("."))
        open("/dev/termination-log", "w").write(json.dumps(out))
    """
    pod = make_pod(
        "volumes",
        script,
        args=["/etc/secret", "/etc/projected", "/etc/podinfo"],
        volumeMounts=[
            {"name": "secret", "mountPath": "/etc/secret"},
            {"name": "projected", "mountPath": "/etc/projected"},
            {"name": "podinfo", "mountPath": "/etc/podinfo"},
        ],
    )
    pod["metadata"]["labels"] = {"team": "a"}
    pod["spec"]["volumes"] = [
        {"name": "secret", "secret": {"secretName": "keys", "items": [{"key": "a", "path": "renamed/a.txt"}]}},
        {
            "name": "projected",
            "projected": {
                "sources": [
                    {"secret": {"name": "keys", "items": [{"key": "b", "path": "b"}]}},
                    {"configMap": {"name": "settings"}},
                    {"downwardAPI": {"items": [{"path": "name", "fieldRef": {"fieldPath": "metadata.name"}}]}},
                    {"serviceAccountToken": {"path": "sa/token", "audience": "kube-sft-test"}},
                ]
            },
        },
        {
            "name": "podinfo",
            "downwardAPI": {"items": [{"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}}]},
        },
    ]
    v1.create_namespaced_pod(namespace, pod)
    done = wait_phase(kube_cluster, namespace, "volumes", {"Succeeded", "Failed"})
    assert done.status.phase == "Succeeded", node_agent.logs(namespace, "volumes")
    out = json.loads(terminated(done).message)
    assert out == {
        "/etc/secret": {"renamed/a.txt": "alpha"},
        "/etc/projected": {"b": "beta", "mode": "fast", "name": "volumes"},
        "/etc/podinfo": {"labels": 'team="a"'},
        "token_parts": 3,
    }


def test_second_node_without_mount_namespaces_rewrites_paths(kube_cluster: ControlPlane, namespace: str) -> None:
    """A second node, in the fallback mode for non-root developers: mount paths are rewritten instead."""
    agent = NodeAgent(
        kube_cluster.api_client(),
        kube_cluster.server,
        kube_cluster.pki.ca.cert,
        kube_cluster.workdir / "node-1",
        node_name="kube-sft-node-1",
        labels={"kube-sft.test/pool": "fallback"},
        real_mounts=False,
        provision_volumes=False,
    ).start()
    try:
        script = """
            import json, os, sys
            sa = os.environ["KUBE_SFT_SERVICEACCOUNT_DIR"]
            out = {"sa_ns": open(os.path.join(sa, "namespace")).read(), "arg": sys.argv[1]}
            open("/dev/termination-log", "w").write(json.dumps(out))
        """
        pod = make_pod("fallback", script, args=["/var/run/secrets/kubernetes.io/serviceaccount/token"])
        pod["spec"]["nodeSelector"] = {"kube-sft.test/pool": "fallback"}
        core(kube_cluster).create_namespaced_pod(namespace, pod)
        done = wait_phase(kube_cluster, namespace, "fallback", {"Succeeded", "Failed"})
        assert done.spec.node_name == "kube-sft-node-1"
        assert done.status.phase == "Succeeded", agent.logs(namespace, "fallback")
        out = json.loads(terminated(done).message)
        assert out["sa_ns"] == namespace
        assert out["arg"].startswith(str(agent.workdir)) and out["arg"].endswith("/token")
    finally:
        agent.stop()


def test_helm_installs_a_chart_with_the_real_binary(kube_cluster: ControlPlane, namespace: str, tmp_path: Path) -> None:
    chart = tmp_path / "probe"
    (chart / "templates").mkdir(parents=True)
    (chart / "Chart.yaml").write_text("apiVersion: v2\nname: probe\nversion: 0.1.0\n")
    (chart / "values.yaml").write_text("greeting: hello\n")
    (chart / "templates" / "cm.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}-cm\ndata:\n  greeting: {{ .Values.greeting }}\n"
    )
    kube_cluster.helm("install", "probe", str(chart), "-n", namespace, "--set", "greeting=hi", "--wait")
    data = core(kube_cluster).read_namespaced_config_map("probe-cm", namespace).data
    assert data == {"greeting": "hi"}
    assert "probe" in kube_cluster.helm("list", "-n", namespace, "-q").stdout.split()
    kube_cluster.helm("uninstall", "probe", "-n", namespace, "--wait")
    with pytest.raises(ApiException):
        core(kube_cluster).read_namespaced_config_map("probe-cm", namespace)


def test_deployment_pods_are_replaced_when_deleted(
    kube_cluster: ControlPlane, node_agent: NodeAgent, namespace: str
) -> None:
    """Deployment -> ReplicaSet -> pod on the agent's node; a deleted pod is replaced (operator HA relies on it)."""
    container = make_pod("unused", "import time; time.sleep(600)")["spec"]["containers"][0]
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "sleeper"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "sleeper"}},
            "template": {"metadata": {"labels": {"app": "sleeper"}}, "spec": {"containers": [container]}},
        },
    }
    apps = kubernetes.client.AppsV1Api(kube_cluster.client)
    v1 = core(kube_cluster)
    apps.create_namespaced_deployment(namespace, deployment)

    def running_pods() -> list[str]:
        pods = v1.list_namespaced_pod(namespace, label_selector="app=sleeper").items
        return [p.metadata.name for p in pods if p.status.phase == "Running" and not p.metadata.deletion_timestamp]

    first = wait_until(running_pods, 60, "the Deployment's pod to run")
    wait_until(
        lambda: apps.read_namespaced_deployment(namespace=namespace, name="sleeper").status.available_replicas == 1,
        30,
        "availableReplicas 1",
    )
    v1.delete_namespaced_pod(first[0], namespace, grace_period_seconds=2)
    second = wait_until(lambda: [n for n in running_pods() if n != first[0]], 60, "a replacement pod")
    assert second and second[0] != first[0]


def test_pod_waits_for_a_missing_config_map(kube_cluster: ControlPlane, node_agent: NodeAgent, namespace: str) -> None:
    """Like the kubelet, the agent keeps a pod Pending until the ConfigMap it mounts exists."""
    v1 = core(kube_cluster)
    pod = make_pod("waiter", "import sys; open('/dev/termination-log', 'w').write(open(sys.argv[1]).read())")
    pod["spec"]["containers"][0].update(
        args=["/etc/late/value"], volumeMounts=[{"name": "late", "mountPath": "/etc/late"}]
    )
    pod["spec"]["volumes"] = [{"name": "late", "configMap": {"name": "late"}}]
    v1.create_namespaced_pod(namespace, pod)

    def waiting() -> str | None:
        statuses = v1.read_namespaced_pod("waiter", namespace).status.container_statuses or []
        return statuses[0].state.waiting.reason if statuses and statuses[0].state.waiting else None

    assert wait_until(waiting, 30, "the pod to wait for its ConfigMap") == "ContainerCreating"
    assert v1.read_namespaced_pod("waiter", namespace).status.phase == "Pending"
    v1.create_namespaced_config_map(namespace, {"metadata": {"name": "late"}, "data": {"value": "arrived"}})
    done = wait_phase(kube_cluster, namespace, "waiter", {"Succeeded", "Failed"})
    assert (done.status.phase, terminated(done).message) == ("Succeeded", "arrived")


def test_master_addr_resolves_to_the_newest_live_pod_of_its_hostname(
    kube_cluster: ControlPlane, node_agent: NodeAgent, namespace: str
) -> None:
    """A restarted gang's rank 0 (`<job>-node-0-a1`) shares its hostname with the previous attempt's pod:
    MASTER_ADDR must name the newest pod that is not being deleted."""
    v1 = core(kube_cluster)
    for name in ("rank0", "rank0-a1"):
        pod = make_pod(name, "import time; time.sleep(60)")
        pod["spec"]["hostname"] = "job-node-0"
        v1.create_namespaced_pod(namespace, pod)
        time.sleep(1.1)  # creationTimestamp has one-second resolution
    assert node_agent._pod_for_hostname(namespace, "job-node-0") == "rank0-a1"
    v1.delete_namespaced_pod("rank0-a1", namespace, grace_period_seconds=30)
    assert node_agent._pod_for_hostname(namespace, "job-node-0") == "rank0"
    assert node_agent._pod_for_hostname(namespace, "no-such-host") == "no-such-host"


SERVER_SCRIPT = """
    import os, socket
    server = socket.create_server(("0.0.0.0", 8080))
    while True:
        conn, _ = server.accept()
        conn.sendall(os.environ["POD_NAME"].encode())
        conn.close()
"""


def test_pods_have_their_own_network_namespace(
    kube_cluster: ControlPlane, node_agent: NodeAgent, namespace: str
) -> None:
    """Two pods both bind 0.0.0.0:8080; the host and other pods reach each by IP and by DNS name."""
    if not node_agent.network_namespaces:
        pytest.skip("pod network namespaces need root and iproute2 (CI has both)")
    v1 = core(kube_cluster)
    ips = {}
    for name in ("srv-a", "srv-b"):
        pod = make_pod(name, SERVER_SCRIPT)
        pod["spec"].update({"hostname": name, "subdomain": "srv"})
        v1.create_namespaced_pod(namespace, pod)
    for name in ("srv-a", "srv-b"):
        ips[name] = wait_phase(kube_cluster, namespace, name, {"Running"}).status.pod_ip

    def greeting(ip: str) -> str:
        with socket.create_connection((ip, 8080), timeout=2) as conn:
            return conn.recv(100).decode()

    for name, ip in ips.items():
        assert wait_until(functools.partial(greeting, ip), 20, f"{name} to serve on {ip}:8080") == name
    client = """
        import socket
        with socket.create_connection(("srv-b.srv", 8080), timeout=5) as conn:
            open("/dev/termination-log", "w").write(conn.recv(100).decode())
    """
    v1.create_namespaced_pod(namespace, make_pod("client", client))
    done = wait_phase(kube_cluster, namespace, "client", {"Succeeded", "Failed"})
    assert (done.status.phase, terminated(done).message) == ("Succeeded", "srv-b"), node_agent.logs(namespace, "client")


def test_killing_a_pod_process_fails_the_pod_with_the_signal_exit_code(
    kube_cluster: ControlPlane, node_agent: NodeAgent, namespace: str
) -> None:
    """The chaos helper: a SIGKILLed container ends its restartPolicy=Never pod Failed with exit code 137."""
    core(kube_cluster).create_namespaced_pod(namespace, make_pod("victim", "import time; time.sleep(600)"))
    wait_phase(kube_cluster, namespace, "victim", {"Running"})
    node_agent.kill(namespace, "victim")
    done = wait_phase(kube_cluster, namespace, "victim", {"Succeeded", "Failed"})
    assert done.status.phase == "Failed"
    assert (terminated(done).exit_code, terminated(done).reason) == (137, "Error")


def test_host_network_pod_shares_the_node_network(
    kube_cluster: ControlPlane, node_agent: NodeAgent, namespace: str
) -> None:
    port = kube_cluster.server.rsplit(":", 1)[1]
    script = f"""
        import socket
        socket.create_connection(("127.0.0.1", {port}), timeout=5).close()
    """
    pod = make_pod("hostnet", script)
    pod["spec"]["hostNetwork"] = True
    core(kube_cluster).create_namespaced_pod(namespace, pod)
    done = wait_phase(kube_cluster, namespace, "hostnet", {"Succeeded", "Failed"})
    assert done.status.phase == "Succeeded", node_agent.logs(namespace, "hostnet")
    assert done.status.pod_ip == done.status.host_ip == node_agent.host_ip


TORCH_SCRIPT = """
    import os, torch, torch.distributed as dist
    dist.init_process_group("gloo", rank=int(os.environ["RANK"]), world_size=2)
    value = torch.tensor([float(os.environ["RANK"]) + 1.0])
    dist.all_reduce(value)
    open("/dev/termination-log", "w").write(str(value.item()))
    dist.destroy_process_group()
"""


@pytest.mark.slow
def test_two_pods_form_a_torch_gloo_group(kube_cluster: ControlPlane, node_agent: NodeAgent, namespace: str) -> None:
    """Rank 1 starts first and finds rank 0 through MASTER_ADDR=<job>-0.<job> (as the operator renders it)."""
    v1 = core(kube_cluster)
    for rank in (1, 0):
        env = [
            {"name": "MASTER_ADDR", "value": "ddp-0.ddp"},
            {"name": "MASTER_PORT", "value": "29500"},
            {"name": "RANK", "value": str(rank)},
        ]
        pod = make_pod(f"ddp-{rank}", TORCH_SCRIPT, env=env)
        pod["spec"].update({"hostname": f"ddp-{rank}", "subdomain": "ddp"})
        v1.create_namespaced_pod(namespace, pod)
    for rank in (0, 1):
        done = wait_phase(kube_cluster, namespace, f"ddp-{rank}", {"Succeeded", "Failed"}, timeout=120)
        assert done.status.phase == "Succeeded", node_agent.logs(namespace, f"ddp-{rank}")
        assert terminated(done).message == "3.0"
