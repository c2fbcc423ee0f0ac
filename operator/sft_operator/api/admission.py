"""Admission policies of the SFTJob API: an SFTJob never lets its author do more than they could do
directly. Generated from this module like the CRD from the models (`make crds` writes
charts/kube-sft/files/admission-policies.yaml; the chart adds the bindings).

The rules (docs/security.md explains them and how to relax them):

- `sftjob-authorization` (every namespace, CREATE and UPDATE of sftjobs): every Secret, ConfigMap and
  PersistentVolumeClaim the spec names (`references.REFERENCES`) needs `get` on it for the requesting user (on
  UPDATE only names the old spec did not have are checked); a ServiceAccount other than the job's own
  `<job>-trainer` needs `create pods` in the namespace; labels and annotations the pods would get
  under the reserved domain (`kube-sft.io/`, `*.kube-sft.io/`) are refused; the creator annotations
  are what the creator policy wrote and never change; the job's own annotations under the reserved
  domain (the operator's lifecycle record) are written by the operator only.
- `sftjob-host-access` (bound by the chart to every namespace but `admission.hostAccessNamespaces`):
  hostPath volumes (storage locations and pod volumes), a toleration of every taint or of the
  control plane's taints, and Bidirectional mount propagation are refused.
- `sftjob-trainer-status` (UPDATE of sftjobs/status by the job's own trainer ServiceAccount): only
  TRAINER_STATUS_FIELDS may change; phase, attempt, restarts, conditions, ... are the operator's.
- `sftjob-creator` (a MutatingAdmissionPolicy, CREATE): records the creating user in CREATOR_*
  annotations, so that the operator can check the creator's rights again with a SubjectAccessReview
  before it creates pods (`sft_operator.access`).

A CEL expression may make at most two authorization checks (each costs 350 000 of the 1 000 000 per
expression) and a policy at most 28 (10 000 000 per evaluation), so the names of each resource are
deduplicated and checked in SLOTS one-check validations: more distinct new names than slots are refused.
(A message expression runs without the authorizer, so the checks sit in the validations themselves.)
"""

from __future__ import annotations

from typing import Any

from sft_operator.api.models import GROUP, PLURAL, RESERVED_DOMAIN, TRAINER_SERVICE_ACCOUNT_SUFFIX, SFTJobStatus
from sft_operator.api.references import REFERENCES, Reference, Segment

Object = dict[str, Any]

POLICY_AUTHORIZATION = f"sftjob-authorization.{GROUP}"
POLICY_HOST_ACCESS = f"sftjob-host-access.{GROUP}"
POLICY_TRAINER_STATUS = f"sftjob-trainer-status.{GROUP}"
POLICY_CREATOR = f"sftjob-creator.{GROUP}"

CREATOR_ANNOTATION = f"{GROUP}/created-by"
CREATOR_GROUPS_ANNOTATION = f"{GROUP}/created-by-groups"
CREATOR_UID_ANNOTATION = f"{GROUP}/created-by-uid"
GROUP_SEPARATOR = ","
OPERATOR_USERNAME = "KUBE_SFT_OPERATOR_USERNAME"
"""Placeholder the chart replaces with its operator's username (`system:serviceaccount:<ns>:<name>`)."""
"""Separates the creator's groups in CREATOR_GROUPS_ANNOTATION."""

RESERVED_KEY_PATTERN = "^([^/]*[.])?" + RESERVED_DOMAIN.replace(".", "[.]") + "/"
"""A label or annotation key under the reserved domain (RE2, as CEL's `matches`)."""

TRAINER_STATUS_FIELDS: tuple[str, ...] = ("progress", "metrics", "latestCheckpoint", "finalModel")
"""The status fields the trainer's rank 0 writes; every other status field drives the lifecycle."""

CONTROL_PLANE_TAINTS: tuple[str, ...] = ("node-role.kubernetes.io/control-plane", "node-role.kubernetes.io/master")

SLOTS: dict[str, int] = {"secrets": 10, "configmaps": 5, "persistentvolumeclaims": 5}
"""Distinct names of each resource one request may newly reference (one authorization check each)."""

VARIABLE_STEM = {"secrets": "secret", "configmaps": "configMap", "persistentvolumeclaims": "claim"}


# --- CEL ------------------------------------------------------------------------------------------


def _quote(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _optional_chain(root: str, segments: tuple[Segment, ...]) -> str:
    return root + "".join(f".?{segment.key}" for segment in segments)


def references_cel(root: str, reference: Reference) -> str:
    """CEL: the list of {'field', 'name'} maps of the objects `reference` names under `root` (a spec)."""
    return _references_cel(root, reference.segments, ["spec"], 0)


FieldParts = list[str]
"""A field path being built: literal text, and CEL expressions wrapped in `(...)`."""


def _field_cel(parts: FieldParts) -> str:
    merged: list[str] = []
    literal = ""
    for part in parts:
        if part.startswith("("):
            merged += [_quote(literal)] if literal else []
            merged.append(f"string{part}")
            literal = ""
        else:
            literal += part
    merged += [_quote(literal)] if literal else []
    return " + ".join(merged)


def _references_cel(root: str, segments: tuple[Segment, ...], field: FieldParts, depth: int) -> str:
    split = next((i for i, segment in enumerate(segments) if segment.is_list), len(segments))
    if split == len(segments):
        chain = _optional_chain(root, segments)
        field = [*field, "".join("." + segment.key for segment in segments)]
        name = f"n{depth}"
        return (
            f"[{chain}.orValue('')].filter({name}, {name} != '')"
            f".map({name}, {{'field': {_field_cel(field)}, 'name': string({name})}})"
        )
    chain = _optional_chain(root, segments[: split + 1])
    item, naming = f"x{depth}", segments[split].naming
    label = ["[", f"({item}.{naming})", "]"] if naming else ["[]"]
    field = [*field, "".join("." + segment.key for segment in segments[: split + 1]), *label]
    inner = _references_cel(item, segments[split + 1 :], field, depth + 1)
    return f"{chain}.orValue([]).map({item}, {inner}).flatten()"


def _variable(name: str, expression: str) -> Object:
    return {"name": name, "expression": expression}


def _validation(expression: str, message_expression: str, reason: str = "Forbidden") -> Object:
    return {"expression": expression, "messageExpression": message_expression, "reason": reason}


USER = "request.userInfo.username"


def _resource_rules(resource: str, operations: list[str]) -> Object:
    return {
        "resourceRules": [
            {"apiGroups": [GROUP], "apiVersions": ["*"], "operations": operations, "resources": [resource]}
        ]
    }


def _reference_rules(resource: str) -> tuple[list[Object], list[Object]]:
    """Variables and validations: every newly named object of `resource` needs `get` on it.

    One validation per slot makes the check: a message expression is evaluated without the
    authorizer, so it names the slot's name and fields from variables that make no check."""
    stem, slots = VARIABLE_STEM[resource], SLOTS[resource]
    own = [reference for reference in REFERENCES if reference.resource == resource]
    current = " + ".join(references_cel("object.spec", reference) for reference in own)
    old = " + ".join(references_cel("oldObject.spec", reference) for reference in own)
    refs, olds, new = f"{stem}Refs", f"{stem}OldNames", f"{stem}NewNames"
    variables = [
        _variable(refs, current),
        _variable(olds, f"request.operation == 'UPDATE' ? ({old}).map(r, r.name) : []"),
        _variable(new, f"variables.{refs}.map(r, r.name).distinct().filter(n, !(n in variables.{olds}))"),
    ]
    validations = [
        _validation(
            f"size(variables.{new}) <= {slots}",
            f"'an SFTJob may newly reference at most {slots} {resource} at once (it names ' + "
            f"string(size(variables.{new})) + '); split the change'",
            "Invalid",
        )
    ]
    for slot in range(slots):
        name = f"variables.{new}[{slot}]"
        check = (
            f"authorizer.group('').resource('{resource}').namespace(request.namespace).name({name})"
            ".check('get').allowed()"
        )
        validations.append(
            _validation(
                f"size(variables.{new}) <= {slot} || {check}",
                f"variables.{refs}.filter(r, r.name == {name}).map(r, r.field).join(', ') + ': ' + {USER} + "
                f"' may not get {resource} ' + {name} + ' in namespace ' + request.namespace + "
                "', so an SFTJob of theirs may not reference it'",
            )
        )
    return variables, validations


def _service_account_rules() -> tuple[list[Object], list[Object]]:
    own = f"object.metadata.name + '{TRAINER_SERVICE_ACCOUNT_SUFFIX}'"
    variables = [
        _variable("serviceAccount", "object.spec.?pod.?serviceAccountName.orValue('')"),
        _variable(
            "oldServiceAccount",
            "request.operation == 'UPDATE' ? oldObject.spec.?pod.?serviceAccountName.orValue('') : ''",
        ),
    ]
    validations = [
        _validation(
            f"variables.serviceAccount == '' || variables.serviceAccount == {own} || "
            "variables.serviceAccount == variables.oldServiceAccount || "
            "authorizer.group('').resource('pods').namespace(request.namespace).check('create').allowed()",
            f"'spec.pod.serviceAccountName: ' + {USER} + ' may not create pods in namespace ' + request.namespace + "
            "', so an SFTJob of theirs may not run as ServiceAccount ' + variables.serviceAccount + "
            "' (leave it unset: every job gets its own)'",
        )
    ]
    return variables, validations


def _reserved_key_rules() -> tuple[list[Object], list[Object]]:
    variables = [
        _variable(
            "podUnchanged",
            "request.operation == 'UPDATE' && has(object.spec.pod) && has(oldObject.spec.pod) && "
            "object.spec.pod == oldObject.spec.pod",
        ),
    ]
    validations = []
    for what in ("labels", "annotations"):
        name = f"reserved{what.capitalize()}"
        variables.append(
            _variable(name, f"object.spec.?pod.?{what}.orValue({{}}).filter(k, k.matches('{RESERVED_KEY_PATTERN}'))")
        )
        validations.append(
            _validation(
                f"variables.podUnchanged || size(variables.{name}) == 0",
                f"'spec.pod.{what}: ' + variables.{name}.join(', ') + ' are reserved for the kube-sft operator "
                f"(keys under {RESERVED_DOMAIN}/ and *.{RESERVED_DOMAIN}/)'",
                "Invalid",
            )
        )
    return variables, validations


def creator_values() -> dict[str, str]:
    """CEL of the value each creator annotation gets (the creating request's user)."""
    return {
        CREATOR_ANNOTATION: USER,
        CREATOR_GROUPS_ANNOTATION: f"request.userInfo.?groups.orValue([]).join('{GROUP_SEPARATOR}')",
        CREATOR_UID_ANNOTATION: "request.userInfo.?uid.orValue('')",
    }


def _creator_rules() -> list[Object]:
    validations = []
    for key, value in creator_values().items():
        current = f"object.metadata.?annotations.orValue({{}})[?{_quote(key)}]"
        previous = f"oldObject.metadata.?annotations.orValue({{}})[?{_quote(key)}]"
        validations.append(
            _validation(
                f"request.operation == 'CREATE' ? {current}.orValue({value}) == {value} : {current} == {previous}",
                f"'metadata.annotations[{key}]: set by the API server to the user who created the SFTJob; "
                "it cannot be written or changed'",
            )
        )
    return validations


def _job_annotation_rules() -> tuple[list[Object], list[Object]]:
    """Annotations of the SFTJob under the reserved domain (the operator's lifecycle record) are the operator's."""
    creators = ", ".join(_quote(key) for key in creator_values())
    mine = f"k.matches('{RESERVED_KEY_PATTERN}') && !(k in [{creators}])"
    new, old = "object.metadata.?annotations.orValue({})", "oldObject.metadata.?annotations.orValue({})"
    changed = (
        f"request.operation == 'CREATE' ? {new}.filter(k, {mine}) : "
        f"{new}.filter(k, {mine} && (!(k in {old}) || {old}[k] != object.metadata.annotations[k])) + "
        f"{old}.filter(k, {mine} && !(k in {new}))"
    )
    variables = [_variable("reservedJobAnnotations", changed)]
    validations = [
        _validation(
            f"{USER} == '{OPERATOR_USERNAME}' || size(variables.reservedJobAnnotations) == 0",
            "'metadata.annotations: ' + variables.reservedJobAnnotations.join(', ') + "
            f"' are written only by the kube-sft operator (keys under {RESERVED_DOMAIN}/ and *.{RESERVED_DOMAIN}/)'",
        )
    ]
    return variables, validations


def authorization_policy() -> Object:
    """The ValidatingAdmissionPolicy refusing references, ServiceAccounts and keys the author may not use."""
    variables: list[Object] = []
    validations: list[Object] = []
    for resource in SLOTS:
        more_variables, more_validations = _reference_rules(resource)
        variables += more_variables
        validations += more_validations
    for rules in (_service_account_rules(), _reserved_key_rules(), _job_annotation_rules()):
        variables += rules[0]
        validations += rules[1]
    validations += _creator_rules()
    return _policy(
        POLICY_AUTHORIZATION,
        {
            "failurePolicy": "Fail",
            "matchConstraints": _resource_rules(PLURAL, ["CREATE", "UPDATE"]),
            "variables": variables,
            "validations": validations,
        },
    )


def host_access_fields_cel() -> str:
    """CEL: the list of field paths that give the pods access to the node."""
    storage = ", ".join(
        f"object.spec.?storage.?{role}.?hostPath.hasValue() ? 'spec.storage.{role}.hostPath' : ''"
        for role in ("model", "data", "output")
    )
    taints = ", ".join(_quote(taint) for taint in CONTROL_PLANE_TAINTS)
    return (
        f"[{storage}].filter(f, f != '')"
        " + object.spec.?pod.?volumes.orValue([]).filter(v, has(v.hostPath))"
        ".map(v, 'spec.pod.volumes[' + string(v.name) + '].hostPath')"
        " + object.spec.?pod.?tolerations.orValue([])"
        ".filter(t, (t.?key.orValue('') == '' && t.?operator.orValue('') == 'Exists') || "
        f"t.?key.orValue('') in [{taints}])"
        ".map(t, 'spec.pod.tolerations[' + (t.?key.orValue('') == '' ? '*' : string(t.key)) + ']')"
        " + object.spec.?pod.?volumeMounts.orValue([]).filter(m, m.?mountPropagation.orValue('') == 'Bidirectional')"
        ".map(m, 'spec.pod.volumeMounts[' + string(m.name) + '].mountPropagation')"
    )


def host_access_policy() -> Object:
    """The ValidatingAdmissionPolicy refusing host access (the chart binds it outside its allow-list)."""
    return _policy(
        POLICY_HOST_ACCESS,
        {
            "failurePolicy": "Fail",
            "matchConstraints": _resource_rules(PLURAL, ["CREATE", "UPDATE"]),
            "variables": [
                _variable("specUnchanged", "request.operation == 'UPDATE' && object.spec == oldObject.spec"),
                _variable("hostAccess", host_access_fields_cel()),
            ],
            "validations": [
                _validation(
                    "variables.specUnchanged || size(variables.hostAccess) == 0",
                    "variables.hostAccess.join(', ') + ': host access (a hostPath volume, tolerating every taint "
                    "or the control plane\\'s, Bidirectional mount propagation) is not allowed in namespace ' + "
                    "request.namespace + ' (the kube-sft chart allows it only in admission.hostAccessNamespaces)'",
                )
            ],
        },
    )


def lifecycle_status_fields() -> list[str]:
    """Status fields the operator owns: every field of SFTJobStatus but TRAINER_STATUS_FIELDS."""
    names = [info.serialization_alias or name for name, info in SFTJobStatus.model_fields.items()]
    unknown = set(TRAINER_STATUS_FIELDS) - set(names)
    if unknown:
        raise ValueError(f"TRAINER_STATUS_FIELDS names no status field: {sorted(unknown)}")
    return [name for name in names if name not in TRAINER_STATUS_FIELDS]


def trainer_identities_cel() -> str:
    """CEL: the usernames of the job's trainer pods (the per-job ServiceAccount, or the one the spec names)."""
    prefix = "'system:serviceaccount:' + request.namespace + ':'"
    own = f"object.metadata.name + '{TRAINER_SERVICE_ACCOUNT_SUFFIX}'"
    return f"[{prefix} + {own}, {prefix} + object.spec.?pod.?serviceAccountName.orValue({own})]"


def trainer_status_policy() -> Object:
    """The ValidatingAdmissionPolicy keeping the trainer's token off the lifecycle fields of status."""
    allowed = ", ".join(f"status.{name}" for name in TRAINER_STATUS_FIELDS)
    return _policy(
        POLICY_TRAINER_STATUS,
        {
            "failurePolicy": "Fail",
            "matchConstraints": _resource_rules(f"{PLURAL}/status", ["UPDATE"]),
            "matchConditions": [{"name": "trainer-identity", "expression": f"{USER} in {trainer_identities_cel()}"}],
            "validations": [
                _validation(
                    f"object.?status.?{name} == oldObject.?status.?{name}",
                    f"'status.{name}: the trainer\\'s ServiceAccount may write only {allowed}; "
                    f"{name} is the operator\\'s'",
                )
                for name in lifecycle_status_fields()
            ],
        },
    )


def creator_patch_cel() -> str:
    """CEL: the JSON patch adding the creator annotations (to the existing map, or as a new one).

    A JSON patch, not an apply configuration: applying one converts the object to its schema's types
    first, so a wrong type anywhere in the spec would be reported as this policy's error instead of the
    API server's schema error naming the field."""
    values = creator_values()
    each = ", ".join(
        f"JSONPatch{{op: 'add', path: '/metadata/annotations/' + jsonpatch.escapeKey({_quote(key)}), value: {value}}}"
        for key, value in values.items()
    )
    whole = ", ".join(f"{_quote(key)}: {value}" for key, value in values.items())
    return (
        f"has(object.metadata.annotations) ? [{each}] : "
        f"[JSONPatch{{op: 'add', path: '/metadata/annotations', value: {{{whole}}}}}]"
    )


def creator_policy() -> Object:
    """The MutatingAdmissionPolicy recording who created an SFTJob (for the operator's re-check)."""
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingAdmissionPolicy",
        "metadata": {"name": POLICY_CREATOR, "labels": _labels()},
        "spec": {
            "failurePolicy": "Fail",
            "reinvocationPolicy": "Never",
            "matchConstraints": _resource_rules(PLURAL, ["CREATE"]),
            "mutations": [{"patchType": "JSONPatch", "jsonPatch": {"expression": creator_patch_cel()}}],
        },
    }


def _labels() -> dict[str, str]:
    return {"app.kubernetes.io/name": "kube-sft", "app.kubernetes.io/component": "admission"}


def _policy(name: str, spec: Object) -> Object:
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": name, "labels": _labels()},
        "spec": spec,
    }


def policies() -> list[Object]:
    """Every admission policy the chart installs (their bindings are chart templates)."""
    return [authorization_policy(), host_access_policy(), trainer_status_policy(), creator_policy()]
