"""The dev cluster: etcd, kube-apiserver, controller-manager, scheduler, node agents, a real node, Prometheus.

One package, used three ways: `make dev-cluster` (dev_cluster.py), the benchmarks and scripts in
bench/ and hack/, and the tests (their pytest fixtures live in tests/cluster_fixtures.py). It
imports neither `tests` nor `bench` (tests/unit/test_import_direction.py enforces it).

Nothing here is a mock: the binaries are built from the Go module proxy by `make cluster-bins`
(hack/controlplane/build.sh) and cached in $KUBE_SFT_CACHE/bin/<k8s-version>/.
"""
