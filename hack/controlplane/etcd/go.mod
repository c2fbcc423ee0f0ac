// Wrapper module: builds etcd and etcdctl from the Go module proxy (kept apart from the k8s
// wrapper so etcd's dependency versions never move Kubernetes' ones).
module kube-sft/hack/controlplane/etcd

go 1.26.0

require (
	go.etcd.io/etcd/etcdctl/v3 v3.7.3
	go.etcd.io/etcd/server/v3 v3.7.3
)
