"""The real test control plane: etcd, kube-apiserver, controller-manager, scheduler, a node agent, Prometheus.

Nothing here is a mock: the binaries are built from the Go module proxy by `make cluster-bins`
(hack/controlplane/build.sh) and cached in $KUBE_SFT_CACHE/bin/<k8s-version>/.
"""
