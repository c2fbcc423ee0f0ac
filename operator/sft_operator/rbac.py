"""Permissions the operator needs beyond its own API calls (which live in `kube.py`).

The chart's ClusterRole must equal: the calls in kube.py + the resources kopf watches for our
handlers + FRAMEWORK_RULES + the per-job Role (Kubernetes lets an operator grant only what it
holds). tests/unit/operator/test_operator_rbac.py derives the first two from the code.
"""

Rule = tuple[str, str, str]  # (apiGroup, resource, verb)

FRAMEWORK_RULES: frozenset[Rule] = frozenset(
    {
        # kopf peering: read and heartbeat the peering object (the resync loop reads it too).
        *(
            ("kopf.dev", resource, verb)
            for resource in ("clusterkopfpeerings", "kopfpeerings")
            for verb in ("get", "list", "watch", "patch")
        ),
        # kopf discovers served resources and namespaces by watching them.
        ("apiextensions.k8s.io", "customresourcedefinitions", "list"),
        ("apiextensions.k8s.io", "customresourcedefinitions", "watch"),
        ("", "namespaces", "list"),
        ("", "namespaces", "watch"),
        # kopf posts its own Events (handler errors) next to ours.
        ("", "events", "create"),
        # sft_operator.access: the creator's rights checked again before pods exist (SubjectAccessReview).
        ("authorization.k8s.io", "subjectaccessreviews", "create"),
    }
)
