"""Load a run configuration: YAML file (or an SFTJob manifest) + Hydra-style dotted overrides.

NeMo-Aligner's keys (a `gpt_sft.yaml`, `train_gpt_sft.py` overrides) are mapped onto ours
(`config/nemo.py`), each with a note. Every error names the dotted key and where it came from: the
file and line, or `command-line override N`; an unknown key gets the closest known one.
"""

import difflib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from sft_trainer.config.nemo import MISSING, NEMO_RULES, nemo_rule, resolve_interpolations
from sft_trainer.config.schema import SFTConfig
from sft_trainer.contract import KIND

KeyPath = tuple[str, ...]


@dataclass(frozen=True)
class ConfigProblem:
    """One thing wrong with a configuration."""

    key: str
    message: str
    source: str | None = None  # "file.yaml:12" or "override trainer.max_steps=x"

    def __str__(self) -> str:
        where = f"{self.source}: " if self.source else ""
        return f"{where}{self.key}: {self.message}" if self.key else f"{where}{self.message}"


class ConfigError(ValueError):
    """A configuration that must not start a run; `problems` lists every reason."""

    def __init__(self, problems: list[ConfigProblem]) -> None:
        self.problems = problems
        super().__init__("invalid configuration:\n" + "\n".join(f"  {p}" for p in problems))


def yaml_with_lines(text: str) -> tuple[Any, dict[KeyPath, int]]:
    """Parse YAML and record the 1-based line of every mapping key, by dotted path."""
    lines: dict[KeyPath, int] = {}

    def walk(node: yaml.Node, path: KeyPath) -> None:
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                child = (*path, str(key_node.value))
                lines[child] = key_node.start_mark.line + 1
                walk(value_node, child)
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                lines[(*path, str(index))] = item.start_mark.line + 1
                walk(item, (*path, str(index)))

    root = yaml.compose(text, Loader=yaml.SafeLoader)
    if root is not None:
        walk(root, ())
    return yaml.safe_load(text), lines


def set_dotted(tree: dict[str, Any], path: KeyPath, value: Any) -> None:
    """Set `tree[a][b][c] = value`, creating intermediate mappings."""
    node = tree
    for part in path[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[path[-1]] = value


# ---------------------------------------------------------------------------- the schema's keys


def _model_class(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside an annotation (`X`, `X | None`), if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for argument in typing.get_args(annotation):
        found = _model_class(argument)
        if found is not None:
            return found
    return None


def schema_annotation(path: KeyPath, model: type[BaseModel] = SFTConfig) -> tuple[bool, Any]:
    """(is `path` a key of the schema, its annotation). A whole block (`data.synthetic`) is a key too."""
    if not path or path[0] not in model.model_fields:
        return False, None
    annotation = model.model_fields[path[0]].annotation
    if len(path) == 1:
        return True, annotation
    inner = _model_class(annotation)
    return schema_annotation(path[1:], inner) if inner is not None else (False, None)


def schema_keys(model: type[BaseModel] = SFTConfig, prefix: str = "") -> list[str]:
    """Every dotted key of the schema (blocks and leaves)."""
    keys: list[str] = []
    for name, info in model.model_fields.items():
        keys.append(prefix + name)
        inner = _model_class(info.annotation)
        if inner is not None:
            keys.extend(schema_keys(inner, f"{prefix}{name}."))
    return keys


def did_you_mean(key: str) -> str:
    """`; did you mean X?` for the closest known key (ours or NeMo-Aligner's), or ``."""
    candidates = schema_keys() + [k for k in NEMO_RULES if not k.endswith(".*")]
    close = difflib.get_close_matches(key, candidates, n=1, cutoff=0.6)
    if not close:  # a right leaf under a wrong block: trainer.max_stepz -> compare the last part
        leaf = key.rsplit(".", 1)[-1]
        by_leaf = {c.rsplit(".", 1)[-1]: c for c in candidates}
        close = [by_leaf[m] for m in difflib.get_close_matches(leaf, list(by_leaf), n=1, cutoff=0.8)]
    return f"; did you mean {close[0]}?" if close else ""


# ---------------------------------------------------------------------------- overrides


def split_override(text: str, index: int) -> tuple[KeyPath, str]:
    """`a.b.c=value` (Hydra style; a leading `+`/`++` is accepted) -> (("a","b","c"), the raw value)."""
    key, sep, raw = text.partition("=")
    key = key.lstrip("+")
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(
            [ConfigProblem("", f"{text!r} is not of the form dotted.key=value", f"command-line override {index}")]
        )
    return tuple(key.split(".")), raw


def _takes_text(annotation: Any) -> bool:
    """A `str` or `str | None` field: its override is taken as written."""
    union = typing.get_origin(annotation) in (typing.Union, types.UnionType)
    return annotation is str or (union and str in typing.get_args(annotation))


def parse_value(raw: str, annotation: Any) -> Any:
    """An override's value as a value, not a YAML document.

    For a text field the raw text is the value (`{input} {output}` needs no quotes); quotes around
    it are removed with YAML's escapes (`"\\n"`), and `null` is None where the field allows it.
    Other fields parse the text as a YAML scalar or flow list; what does not parse stays text (the
    schema then names the key).
    """
    text = raw.strip()
    quoted = len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'"
    if quoted:
        try:
            return yaml.safe_load(text)
        except yaml.YAMLError:
            return text[1:-1]
    if _takes_text(annotation):
        if text in ("null", "~") and type(None) in typing.get_args(annotation):
            return None
        return raw
    if not text:
        return ""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return raw
    if isinstance(value, str):  # YAML 1.1 reads `5e-6` (no dot) as text
        try:
            return float(value)
        except ValueError:
            return value
    return value


def target_annotation(path: KeyPath) -> Any:
    """The annotation of the key `path` ends up in: ours directly, or a NeMo key's target."""
    known, annotation = schema_annotation(path)
    if known:
        return annotation
    rule = nemo_rule(".".join(path))
    if rule is None or rule.target is None:
        return None
    return schema_annotation(tuple(rule.target.split(".")))[1]


# ---------------------------------------------------------------------------- translation


def flatten(tree: dict[str, Any], path: KeyPath = ()) -> list[tuple[KeyPath, Any]]:
    """Leaves of a nested mapping by dotted path; an empty mapping is a leaf."""
    leaves: list[tuple[KeyPath, Any]] = []
    for key, value in tree.items():
        child = (*path, str(key))
        if isinstance(value, dict) and value:
            leaves.extend(flatten(value, child))
        else:
            leaves.append((child, value))
    return leaves


@dataclass
class Translation:
    """Our configuration tree built from a file and overrides, where each key came from, and the notes."""

    tree: dict[str, Any] = field(default_factory=dict)
    origins: dict[KeyPath, str | None] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    problems: list[ConfigProblem] = field(default_factory=list)
    source: str | None = None
    lines: dict[KeyPath, int] = field(default_factory=dict)
    prefix: KeyPath = ()

    def validated(self) -> SFTConfig:
        """The SFTConfig; ConfigError with every problem (translation and schema) otherwise."""
        try:
            config = validate(self.tree, source=self.source, lines=self.lines, prefix=self.prefix, origins=self.origins)
        except ConfigError as error:
            raise ConfigError(self.problems + error.problems) from None
        if self.problems:
            raise ConfigError(self.problems)
        return config


def _show(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False) if isinstance(value, str) else str(value)


def translate(leaves: list[tuple[KeyPath, Any, str | None]]) -> Translation:
    """Our keys from (path, value, origin) leaves: ours kept, NeMo-Aligner keys mapped or ignored (with a note
    each), unknown keys reported with the closest known key. Later leaves win."""
    out = Translation()
    nemo = {".".join(path): value for path, value, _ in leaves if not schema_annotation(path)[0]}
    wandb_on = nemo.get("exp_manager.create_wandb_logger") in (True, "true", "True")
    for path, value, origin in leaves:
        dotted = ".".join(path)
        if schema_annotation(path)[0]:
            set_dotted(out.tree, path, value)
            out.origins[path] = origin
            continue
        rule = nemo_rule(dotted)
        if rule is None:
            out.problems.append(ConfigProblem(dotted, f"unknown key{did_you_mean(dotted)}", origin))
            continue
        if rule.target is None:
            if dotted == "exp_manager.create_wandb_logger" and wandb_on:
                set_dotted(
                    out.tree,
                    ("logging", "wandb", "mode"),
                    out.tree.get("logging", {}).get("wandb", {}).get("mode", "offline"),
                )
                out.origins[("logging", "wandb")] = origin
                out.notes.append(f"{dotted} -> logging.wandb (mode offline unless logging.wandb.mode=online)")
            else:
                out.notes.append(f"{dotted}: ignored ({rule.note})")
            continue
        if value is None or value == MISSING:
            unset = "null" if value is None else MISSING
            out.notes.append(f"{dotted}: ignored (not set: {unset}; {rule.target} keeps its default)")
            continue
        if rule.target.startswith("logging.wandb.") and not wandb_on:
            out.notes.append(f"{dotted}: ignored (exp_manager.create_wandb_logger is not true)")
            continue
        try:
            mapped = rule.apply(value)
        except ValueError as error:
            out.problems.append(ConfigProblem(dotted, str(error), origin))
            continue
        for target, new in mapped:
            target_path = tuple(target.split("."))
            set_dotted(out.tree, target_path, new)
            out.origins[target_path] = f"{origin}: {dotted}" if origin else dotted  # errors name what was typed
        shown = ", ".join(f"{target} = {_show(new)}" for target, new in mapped)
        out.notes.append(f"{dotted} -> {shown}" + (f" ({rule.note})" if rule.note else ""))
    interval = out.tree.get("trainer", {}).get("val_check_interval")
    if "trainer.sft.val_check_interval" in nemo and interval is not None and "save_interval" not in out.tree["trainer"]:
        out.tree["trainer"]["save_interval"] = interval  # gpt_sft.yaml: save_interval: ${.val_check_interval}
        out.notes.append(f"trainer.save_interval = {interval} (gpt_sft.yaml's default: the validation interval)")
    return out


# ---------------------------------------------------------------------------- validation


def validate(
    tree: Any,
    *,
    source: str | None = None,
    lines: dict[KeyPath, int] | None = None,
    prefix: KeyPath = (),
    origins: dict[KeyPath, str | None] | None = None,
) -> SFTConfig:
    """Validate a plain mapping as an SFTConfig, turning pydantic errors into ConfigErrors.

    `prefix` is where the config sits in the file (("spec", "training") for an SFTJob), so line
    numbers can be found; `origins` says where a key came from when it is not the file's line
    (a command-line override, or a NeMo-Aligner key mapped onto it).
    """
    if not isinstance(tree, dict):
        raise ConfigError([ConfigProblem("", "the configuration must be a mapping of keys", source)])
    try:
        return SFTConfig.model_validate(tree)
    except ValidationError as error:
        problems = []
        for item in error.errors():
            # Cross-field rules report several problems in one message, one a line.
            for message in str(item["msg"]).removeprefix("Value error, ").splitlines():
                details = {**item, "msg": message}
                problems.append(_problem(details, source, lines or {}, prefix, origins or {}))
        raise ConfigError(problems) from None


def _problem(
    error: Any, source: str | None, lines: dict[KeyPath, int], prefix: KeyPath, origins: dict[KeyPath, str | None]
) -> ConfigProblem:
    loc = tuple(str(part) for part in error["loc"])
    message = str(error["msg"])
    if error["type"] == "extra_forbidden":
        message = f"unknown key{did_you_mean('.'.join(loc))}"
    head, colon, rest = message.partition(": ")
    if not loc and colon and head.count("."):
        # Cross-field rules put the key first in their message.
        loc, message = tuple(head.split(".")), rest
    elif colon and head.isidentifier() and schema_annotation((*loc, head))[0]:
        loc, message = (*loc, head), rest  # a block's rule about one of its keys (data: prompt_template: ...)
    key = ".".join(loc)
    where = source
    for depth in range(len(loc), 0, -1):
        if loc[:depth] in origins:
            where = origins[loc[:depth]]
            break
        line = lines.get((*prefix, *loc[:depth]))
        if line is not None and source:
            where = f"{source}:{line}"
            break
    return ConfigProblem(key, message, where)


# ---------------------------------------------------------------------------- loading


def read_config_file(path: str | Path) -> tuple[Any, dict[KeyPath, int], KeyPath]:
    """(tree, key lines, prefix) of a run YAML or an SFTJob manifest (whose `spec.training` is the tree)."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError([ConfigProblem("", f"cannot read: {error.strerror}", source)]) from None
    try:
        tree, lines = yaml_with_lines(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark else source
        raise ConfigError([ConfigProblem("", f"not valid YAML: {error}", where)]) from None
    if tree is None:
        raise ConfigError([ConfigProblem("", "the file is empty", source)])
    if isinstance(tree, dict) and tree.get("kind") == KIND:
        return tree.get("spec", {}).get("training", {}), lines, ("spec", "training")
    return tree, lines, ()


def translate_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Translation:
    """A file and overrides, NeMo-Aligner keys included, as our configuration tree (not yet validated)."""
    tree: Any = {}
    lines: dict[KeyPath, int] = {}
    prefix: KeyPath = ()
    source = str(path) if path is not None else None
    if path is not None:
        tree, lines, prefix = read_config_file(path)
    if not isinstance(tree, dict):
        raise ConfigError([ConfigProblem("", "the configuration must be a mapping of keys", source)])
    overridden: dict[KeyPath, str] = {}
    for index, text in enumerate(overrides or [], start=1):
        key, raw = split_override(text, index)
        set_dotted(tree, key, parse_value(raw, target_annotation(key)))
        overridden[key] = f"command-line override {index}"
    resolve_interpolations(tree)

    def origin(leaf: KeyPath) -> tuple[int, str | None]:
        for depth in range(len(leaf), 0, -1):
            if leaf[:depth] in overridden:
                return 1 + list(overridden).index(leaf[:depth]), overridden[leaf[:depth]]
        for depth in range(len(leaf), 0, -1):
            line = lines.get((*prefix, *leaf[:depth]))
            if line is not None:
                return 0, f"{source}:{line}"
        return 0, source

    ordered = sorted(flatten(tree), key=lambda leaf: origin(leaf[0])[0])  # overrides win, in their order
    translation = translate([(leaf, value, origin(leaf)[1]) for leaf, value in ordered])
    translation.source, translation.lines, translation.prefix = source, lines, prefix
    return translation


def load_config_and_notes(
    path: str | Path | None = None, overrides: list[str] | None = None
) -> tuple[SFTConfig, list[str]]:
    """`load_config`, plus one line per NeMo-Aligner key saying what it became or why it is ignored."""
    translation = translate_config(path, overrides)
    return translation.validated(), translation.notes


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> SFTConfig:
    """Load a run config from a YAML file or an SFTJob manifest (its `spec.training`), then apply overrides.

    NeMo-Aligner keys (`trainer.sft.*`, `model.data.*`, `exp_manager.*`, ...) are mapped onto ours.
    """
    return load_config_and_notes(path, overrides)[0]
