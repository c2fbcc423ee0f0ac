"""`kubectl sft generate`'s pure parts: the `sft generate` command line, the generation Job, local paths."""

from collections.abc import Iterable
from pathlib import Path, PurePosixPath
from typing import Any

import typer
import yaml

from sft_operator.api import Storage
from sft_operator.kubectl_plugin.text import job_phase
from sft_operator.render import DEFAULT_IMAGE, LABEL_JOB, storage_volume

Object = dict[str, Any]


def mount_for(path: str, mounts: Iterable[tuple[str, Object]]) -> tuple[str, Object] | None:
    """The (mountPath, volume) whose mount path holds `path`, the deepest one first."""
    target = PurePosixPath(path)
    best: tuple[str, Object] | None = None
    for mount_path, volume in mounts:
        root = PurePosixPath(mount_path)
        if (target == root or root in target.parents) and (best is None or len(mount_path) > len(best[0])):
            best = (mount_path, volume)
    return best


def _storage_mounts(spec: Object) -> list[tuple[str, Object]]:
    """(mountPath, volume) of spec.storage's locations (as the trainer pods mount them) and spec.pod's own volumes."""
    found: list[tuple[str, Object]] = []
    for role, location in Storage.model_validate(spec.get("storage") or {}).locations().items():
        volume = storage_volume(role, location)
        if volume is None or "emptyDir" in volume:
            continue  # emptyDir: gone with the trainer pod
        if location.sub_path:
            volume["subPath"] = location.sub_path
        found.append((location.mount_path, volume))
    pod = spec.get("pod") or {}
    volumes = {volume.get("name"): volume for volume in pod.get("volumes") or []}
    for mount in pod.get("volumeMounts") or []:
        if mount.get("name") in volumes:
            found.append((mount["mountPath"], {**volumes[mount["name"]], "subPath": mount.get("subPath")}))
    return found


def generate_args(
    model: str, prompts: list[str], max_new_tokens: int, temperature: float, chat: dict[str, str] | None = None
) -> list[str]:
    """Arguments of `sft generate` for the prompts; `chat` may hold `system`, `label` and `history` (inline JSON)."""
    args = ["generate", "--model", model]
    for prompt in prompts:
        args += ["--prompt", prompt]
    for key, value in (chat or {}).items():
        args += [f"--{key}", value]
    return [*args, "--max-new-tokens", str(max_new_tokens), "--temperature", str(temperature)]


def chat_options(system: str | None, label: str | None, history: Path | None) -> dict[str, str]:
    """`sft generate`'s chat options; a history file is read here and passed inline (a Job cannot see it)."""
    options = {"system": system, "label": label, "history": history.read_text(encoding="utf-8") if history else None}
    return {key: value for key, value in options.items() if value is not None}


def generation_job(
    job: Object,
    prompts: list[str],
    max_new_tokens: int = 128,
    temperature: float = 0.0,
    chat: dict[str, str] | None = None,
) -> Object:
    """A batch/v1 Job running `sft generate` on the SFTJob's final model, with its volume mounted read-only.

    Raises ValueError when the job has no final model or no persistent volume holds it.
    """
    meta, spec = job["metadata"], job.get("spec", {})
    final = (job.get("status") or {}).get("finalModel")
    if not final:
        raise ValueError(f"SFTJob {meta['name']} has no final model yet (phase {job_phase(job)})")
    found = mount_for(final, _storage_mounts(spec))
    if found is None:
        raise ValueError(f"no persistent volume of SFTJob {meta['name']} holds {final} (an emptyDir is gone)")
    mount_path, volume = found
    volume = dict(volume)
    sub_path = volume.pop("subPath", None)
    volume["name"] = "model"
    mount: Object = {"name": "model", "mountPath": mount_path, "readOnly": True}
    if sub_path:
        mount["subPath"] = sub_path
    gpus = min(int((spec.get("resources") or {}).get("gpusPerNode", 1)), 1)
    resource_name = (spec.get("resources") or {}).get("gpuResourceName", "nvidia.com/gpu")
    container: Object = {
        "name": "generate",
        "image": spec.get("image") or DEFAULT_IMAGE,
        "command": ["sft", *generate_args(final, prompts, max_new_tokens, temperature, chat)],
        "volumeMounts": [mount],
        "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
    }
    if gpus:
        container["resources"] = {"limits": {resource_name: str(gpus)}}
    pod_spec: Object = {
        "restartPolicy": "Never",
        "securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 1000},
        "containers": [container],
        "volumes": [volume],
    }
    pod = spec.get("pod") or {}
    for key in ("nodeSelector", "tolerations", "imagePullSecrets"):
        if pod.get(key):
            pod_spec[key] = pod[key]
    labels = {"app.kubernetes.io/name": "kube-sft", "app.kubernetes.io/component": "generate", LABEL_JOB: meta["name"]}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": f"{meta['name']}-generate",
            "namespace": meta.get("namespace", "default"),
            "labels": labels,
        },
        "spec": {"backoffLimit": 0, "ttlSecondsAfterFinished": 3600, "template": {"spec": pod_spec}},
    }


def generation_instructions(manifest: Object) -> str:
    """The shell commands that run the generation Job and show its answers."""
    name, namespace = manifest["metadata"]["name"], manifest["metadata"]["namespace"]
    body = yaml.safe_dump(manifest, sort_keys=False).rstrip()
    return (
        f"kubectl apply -n {namespace} -f - <<'EOF'\n{body}\nEOF\n"
        f"kubectl wait -n {namespace} --for=condition=complete --timeout=30m job/{name}\n"
        f"kubectl logs -n {namespace} job/{name}"
    )


def local_model_path(final: str, mount_map: dict[str, str]) -> Path | None:
    """Where `final` is on this machine: as is, or under a `--mount MOUNTPATH=LOCALDIR` mapping."""
    direct = Path(final)
    if (direct / "config.json").exists() or (direct / "sft.json").exists():
        return direct
    target = PurePosixPath(final)
    for mount_path, local in sorted(mount_map.items(), key=lambda item: -len(item[0])):
        root = PurePosixPath(mount_path)
        if target == root or root in target.parents:
            candidate = Path(local) / target.relative_to(root)
            if candidate.exists():
                return candidate
    return None


def parse_mounts(values: list[str]) -> dict[str, str]:
    """`/output=/mnt/sft-output` pairs -> {"/output": "/mnt/sft-output"}."""
    mapping = {}
    for value in values:
        mount_path, sep, local = value.partition("=")
        if not sep or not mount_path.startswith("/") or not local:
            raise typer.BadParameter(f"{value!r} is not MOUNTPATH=LOCALDIR")
        mapping[mount_path.rstrip("/") or "/"] = local
    return mapping
