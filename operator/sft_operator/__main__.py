"""`python -m sft_operator`: run the kube-sft operator.

python -m sft_operator --all-namespaces --metrics-port 8080 --liveness-port 8081
python -m sft_operator --namespace team-a --namespace team-b --standalone
"""

import argparse
import ctypes
import logging
import os
import random
import re
import socket
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import kopf
from prometheus_client import start_http_server

import sft_operator.handlers  # noqa: F401  (registers the kopf handlers)
from sft_operator import metrics
from sft_operator.controller import Settings
from sft_operator.render import DEFAULT_IMAGE

# A Service named `x-y` in the pod's namespace makes the kubelet inject `X_Y_SERVICE_HOST`, `X_Y_PORT`
# (= "tcp://10.0.0.41:8080"), `X_Y_PORT_8080_TCP[_PROTO|_PORT|_ADDR]` and `X_Y_SERVICE_PORT[_<PORT NAME>]`.
# Any upper-case prefix can come out of some Service's name, so what keeps a setting from being
# overwritten by a service link is its *ending*: no setting's variable may match this pattern (a unit
# test checks them all). The chart also turns service links off (`enableServiceLinks: false`).
SERVICE_LINK_VARIABLE = re.compile(
    r"^[A-Z][A-Z0-9_]*_(SERVICE_HOST|SERVICE_PORT(_[A-Z0-9_]+)?|PORT(_[0-9]+_(TCP|UDP|SCTP)(_(PROTO|PORT|ADDR))?)?)$"
)


@dataclass(frozen=True)
class EnvSetting:
    """A flag's default from the environment (for the chart), read only when the flag is not given."""

    dest: str
    variable: str
    parse: Callable[[str], Any]
    default: Any


ENV_SETTINGS = (
    EnvSetting("trainer_image", "KUBE_SFT_TRAINER_IMAGE", str, DEFAULT_IMAGE),
    EnvSetting("metrics_port", "KUBE_SFT_METRICS_PORT_NUMBER", int, 8080),
    EnvSetting("liveness_port", "KUBE_SFT_LIVENESS_PORT_NUMBER", int, 8081),
    EnvSetting("resync_seconds", "KUBE_SFT_RESYNC_SECONDS", float, 5.0),
    EnvSetting("workers", "KUBE_SFT_WORKERS", int, 32),
    EnvSetting("pod_event_delay", "KUBE_SFT_POD_EVENT_DELAY", float, 0.5),
    EnvSetting("create_parallelism", "KUBE_SFT_CREATE_PARALLELISM", int, 32),
    EnvSetting("relist_seconds", "KUBE_SFT_RELIST_SECONDS", float, 300.0),
    EnvSetting("peering_name", "KUBE_SFT_PEERING", str, "kube-sft"),
    EnvSetting("peering_lifetime", "KUBE_SFT_PEERING_LIFETIME", int, 20),
)


def env_default(setting: EnvSetting, environ: Mapping[str, str]) -> Any:
    """The setting's value from `environ` (its built-in default when unset or empty).

    Raises ValueError naming the variable when its value does not parse.
    """
    raw = environ.get(setting.variable, "")
    if raw == "":
        return setting.default
    try:
        return setting.parse(raw)
    except ValueError:
        kind = setting.parse.__name__
        raise ValueError(f"environment variable {setting.variable}={raw!r} is not a valid {kind}") from None


def parse_args(argv: list[str] | None = None, environ: Mapping[str, str] | None = None) -> argparse.Namespace:
    """Command-line flags; a flag not given takes its environment default (`ENV_SETTINGS`)."""
    environ = os.environ if environ is None else environ
    parser = argparse.ArgumentParser(prog="python -m sft_operator", description="The kube-sft SFTJob operator.")
    parser.add_argument(
        "--namespace", "-n", action="append", default=[], help="watch this namespace (repeatable; default: all)"
    )
    parser.add_argument("--all-namespaces", "-A", action="store_true", help="watch every namespace (the default)")
    parser.add_argument("--trainer-image")
    parser.add_argument(
        "--default-runtime",
        default=environ.get("KUBE_SFT_DEFAULT_RUNTIME") or None,
        help="ClusterSFTRuntime whose platform defaults SFTJobs without spec.runtimeRef get (default: none)",
    )
    parser.add_argument("--metrics-port", type=int)
    parser.add_argument("--liveness-port", type=int)
    parser.add_argument(
        "--listen-address",
        default=environ.get("POD_IP") or "0.0.0.0",
        help="address of the metrics and liveness servers (default: $POD_IP, else all interfaces)",
    )
    parser.add_argument("--resync-seconds", type=float)
    parser.add_argument(
        "--workers", type=int, help="threads reconciling jobs (one job is never reconciled by two at once)"
    )
    parser.add_argument(
        "--pod-event-delay",
        type=float,
        help="seconds a pod change waits before its job is reconciled (coalesces the ranks' changes)",
    )
    parser.add_argument(
        "--create-parallelism", type=int, help="concurrent create calls for new gangs, all workers together"
    )
    parser.add_argument(
        "--relist-seconds", type=float, help="re-list every job and pod this often (corrects what a watch gap hid)"
    )
    parser.add_argument("--peering-name")
    parser.add_argument(
        "--peering-lifetime", type=int, help="seconds before a silent replica counts as dead and a standby takes over"
    )
    parser.add_argument("--standalone", action="store_true", help="no peering (a single replica)")
    parser.add_argument("--priority", type=int, default=None, help="peering priority (default: random)")
    parser.add_argument("--verbose", "-v", action="store_true")
    args = parser.parse_args(argv)
    for setting in ENV_SETTINGS:
        if getattr(args, setting.dest) is None:
            try:
                setattr(args, setting.dest, env_default(setting, environ))
            except ValueError as error:
                parser.error(str(error))
    if not args.namespace and environ.get("KUBE_SFT_NAMESPACES"):
        args.namespace = [item for item in environ.get("KUBE_SFT_NAMESPACES", "").split(",") if item]
    return args


M_ARENA_MAX = -8  # glibc's mallopt parameter number (malloc.h)


def limit_malloc_arenas(arenas: int = 2) -> bool:
    """Cap glibc's malloc arenas (as `MALLOC_ARENA_MAX` would) before any thread starts.

    glibc gives each thread that contends for the heap an arena of its own, up to 8 per core, and
    rarely returns their free space: with the reconcile workers and create threads this doubled the
    operator's peak RSS under a 500-job burst. An explicit `MALLOC_ARENA_MAX` wins; not glibc: no-op.
    """
    if os.environ.get("MALLOC_ARENA_MAX") or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    return bool(libc.mallopt(M_ARENA_MAX, arenas))


def main(argv: list[str] | None = None) -> None:
    """Configure logging, metrics and peering, then hand over to kopf."""
    limit_malloc_arenas()
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",  # times: to line up replicas' logs
    )
    if not args.verbose:
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)  # one line per handled event otherwise
    # Distinct priorities: kopf pauses *every* replica when two share one.
    priority = args.priority if args.priority is not None else random.randint(1, 2**30)
    identity = f"{os.environ.get('POD_NAME') or socket.gethostname()}-{os.getpid()}"
    settings = Settings(
        namespaces=list(args.namespace),
        trainer_image=args.trainer_image,
        default_runtime=args.default_runtime,
        resync_seconds=args.resync_seconds,
        workers=args.workers,
        pod_event_delay=args.pod_event_delay,
        create_parallelism=args.create_parallelism,
        relist_seconds=args.relist_seconds,
        peering_name=None if args.standalone else args.peering_name,
        peering_lifetime=args.peering_lifetime,
        priority=priority,
        identity=identity,
    )
    if args.metrics_port:
        start_http_server(args.metrics_port, addr=args.listen_address, registry=metrics.REGISTRY)
    kopf.run(
        clusterwide=not args.namespace,
        namespaces=args.namespace,
        standalone=True if args.standalone else None,
        peering_name=None if args.standalone else args.peering_name,
        priority=priority,
        identity=identity,  # type: ignore[arg-type]
        liveness_endpoint=f"http://{args.listen_address}:{args.liveness_port}/healthz" if args.liveness_port else None,
        memo=kopf.Memo(settings=settings),
    )


if __name__ == "__main__":
    main()
