"""The real test node's pure parts: DNS packets and names, CRI log lines, configs, the dev cluster's job."""

import struct
from pathlib import Path
from types import SimpleNamespace

from devcluster.cluster_dns import (
    NXDOMAIN,
    TYPE_A,
    TYPE_AAAA,
    encode_answer,
    newest_live_pod_ip,
    parse_query,
    split_cluster_name,
)
from devcluster.dev_cluster import demo_job, metrics_targets
from devcluster.node_config import cni_config
from devcluster.real_node import parse_cri_log
from sft_operator.api.models import SFTJob


def query(name: str, qtype: int = TYPE_A, ident: int = 0x1234) -> bytes:
    labels = b"".join(bytes([len(part)]) + part.encode() for part in name.split("."))
    return struct.pack("!HHHHHH", ident, 0x0100, 1, 0, 0, 0) + labels + b"\0" + struct.pack("!HH", qtype, 1)


def test_a_query_round_trips_to_one_a_record() -> None:
    question = parse_query(query("job-node-0.job.e2e-jobs.svc.cluster.local"))
    assert (question.id, question.name, question.qtype) == (0x1234, "job-node-0.job.e2e-jobs.svc.cluster.local", 1)
    answer = encode_answer(question, ["10.201.7.12"])
    ident, flags, qd, an = struct.unpack("!HHHH", answer[:8])
    assert (ident, flags & 0x8000, flags & 0xF, qd, an) == (0x1234, 0x8000, 0, 1, 1)
    assert answer.endswith(bytes([10, 201, 7, 12]))


def test_aaaa_gets_no_records_and_unknown_names_nxdomain() -> None:
    question = parse_query(query("x.y.ns.svc.cluster.local", TYPE_AAAA))
    assert struct.unpack("!H", encode_answer(question, ["10.0.0.1"])[6:8]) == (0,)
    assert struct.unpack("!H", encode_answer(question, [], NXDOMAIN)[2:4])[0] & 0xF == NXDOMAIN


def test_cluster_names_split_into_their_parts() -> None:
    assert split_cluster_name("kubernetes.default.svc.cluster.local") == ["kubernetes", "default"]
    assert split_cluster_name("a-node-0.a.ns.svc.cluster.local") == ["a-node-0", "a", "ns"]
    assert split_cluster_name("example.com") is None
    assert split_cluster_name("a.b.c.d.svc.cluster.local") is None


def pod(hostname: str, ip: str, created: int, phase: str = "Running", deleting: bool = False) -> SimpleNamespace:
    return SimpleNamespace(
        spec=SimpleNamespace(hostname=hostname, subdomain="job"),
        status=SimpleNamespace(pod_ip=ip, phase=phase),
        metadata=SimpleNamespace(deletion_timestamp="now" if deleting else None, creation_timestamp=created),
    )


def test_a_hostname_resolves_to_its_newest_live_pod() -> None:
    pods = [
        pod("job-node-0", "10.0.0.2", 1),
        pod("job-node-0", "10.0.0.3", 2, deleting=True),
        pod("job-node-0", "10.0.0.4", 3, phase="Failed"),
        pod("job-node-1", "10.0.0.5", 4),
    ]
    assert newest_live_pod_ip(pods, "job-node-0", "job") == "10.0.0.2"
    assert newest_live_pod_ip(pods, "job-node-2", "job") is None


def test_cri_log_lines_become_the_container_output() -> None:
    text = (
        "2026-12-04T17:00:00.000000001Z stdout F step 1 loss 2.5\n"
        "2026-12-04T17:00:00.000000002Z stderr P part\n"
        "2026-12-04T17:00:00.000000003Z stderr F ial line\n"
        "2026-12-04T17:00:00.000000004Z stdout F \n"
    )
    assert parse_cri_log(text) == "step 1 loss 2.5\npartial line\n\n"


def test_cni_config_is_a_bridge_with_host_local_ipam(tmp_path: Path) -> None:
    config = cni_config("cni7", "10.201.7.0/24", tmp_path)
    bridge = config["plugins"][0]
    assert (bridge["type"], bridge["bridge"], bridge["ipMasq"]) == ("bridge", "cni7", True)
    assert bridge["ipam"]["ranges"] == [[{"subnet": "10.201.7.0/24"}]]
    assert bridge["ipam"]["dataDir"] == str(tmp_path)


def test_the_dev_cluster_demo_job_is_a_valid_small_sftjob() -> None:
    job = SFTJob.model_validate(demo_job())
    assert job.spec.training.trainer.max_steps == 300
    assert job.spec.resources.requests == {"cpu": "500m", "memory": "1Gi"}


def test_metrics_targets_are_running_pods_metrics_ports() -> None:
    def pod_with(phase: str, ip: str, port_name: str) -> SimpleNamespace:
        port = SimpleNamespace(name=port_name, container_port=9400)
        return SimpleNamespace(
            status=SimpleNamespace(phase=phase, pod_ip=ip),
            spec=SimpleNamespace(containers=[SimpleNamespace(ports=[port])]),
        )

    pods = [
        pod_with("Running", "10.0.0.2", "metrics"),
        pod_with("Succeeded", "10.0.0.3", "metrics"),
        pod_with("Running", "10.0.0.4", "dist"),
    ]
    assert metrics_targets(pods) == ["10.0.0.2:9400"]
