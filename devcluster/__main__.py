"""Start the test cluster by hand: `.venv/bin/python -m devcluster [--nodes N] [--for SECONDS]`.

Starts etcd, the API server, controller manager, scheduler and N node agents, prints the admin
KUBECONFIG, and runs until Ctrl-C (or --for seconds), then tears everything down. For poking at the
operator with the real kubectl/helm:

    .venv/bin/python -m devcluster &      # prints: export KUBECONFIG=/tmp/kube-sft-cluster-.../admin.kubeconfig
    export KUBECONFIG=...; ~/.cache/kube-sft/bin/v1.37.2/helm install kube-sft charts/kube-sft -n kube-sft --create-namespace
"""

from __future__ import annotations

import argparse
import signal
import threading

from devcluster.controlplane import ControlPlane
from devcluster.node_agent import NodeAgent


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m devcluster", description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=1, help="node agents to start (default 1)")
    parser.add_argument("--for", dest="seconds", type=float, default=None, help="stop after this many seconds")
    args = parser.parse_args()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    cluster = ControlPlane.start()
    agents: list[NodeAgent] = []
    try:
        for index in range(args.nodes):
            workdir = cluster.workdir / f"node-{index}"
            agent = NodeAgent(
                cluster.api_client(), cluster.server, cluster.pki.ca.cert, workdir, node_name=f"kube-sft-node-{index}"
            )
            agents.append(agent.start())
        print(f"cluster ready in {cluster.started_in:.1f}s; binaries in {cluster.binaries.kubectl.parent}")
        print(f"export KUBECONFIG={cluster.kubeconfig}", flush=True)
        stop.wait(args.seconds)
    except KeyboardInterrupt:
        pass
    finally:
        for agent in agents:
            agent.stop()
        cluster.stop()


if __name__ == "__main__":
    main()
