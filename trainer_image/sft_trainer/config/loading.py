"""Load a run configuration: YAML file (or an SFTJob manifest) + Hydra-style dotted overrides.

Every error names the dotted key and, when it came from a file, the file and line.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from sft_trainer.config.schema import SFTConfig

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


def parse_override(text: str) -> tuple[KeyPath, Any]:
    """`a.b.c=value` (Hydra style; a leading `+`/`++` is accepted) -> (("a","b","c"), parsed value)."""
    key, sep, raw = text.partition("=")
    key = key.lstrip("+")
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError([ConfigProblem("", f"override {text!r} is not of the form dotted.key=value")])
    value = yaml.safe_load(raw) if raw.strip() else ""
    return tuple(key.split(".")), value


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


def validate(
    tree: Any,
    *,
    source: str | None = None,
    lines: dict[KeyPath, int] | None = None,
    prefix: KeyPath = (),
    overridden: set[KeyPath] | None = None,
) -> SFTConfig:
    """Validate a plain mapping as an SFTConfig, turning pydantic errors into ConfigErrors.

    `prefix` is where the config sits in the file (("spec", "training") for an SFTJob), so line
    numbers can be found; `overridden` keys are reported as coming from the command line.
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
                problems.append(_problem(details, source, lines or {}, prefix, overridden or set()))
        raise ConfigError(problems) from None


def _problem(
    error: Any, source: str | None, lines: dict[KeyPath, int], prefix: KeyPath, overridden: set[KeyPath]
) -> ConfigProblem:
    loc = tuple(str(part) for part in error["loc"])
    message = str(error["msg"])
    if error["type"] == "extra_forbidden":
        message = "unknown key"
    key = ".".join(loc)
    if not loc and message.split(":", 1)[0].count("."):
        # Cross-field rules put the key first in their message.
        key, _, message = message.partition(": ")
        loc = tuple(key.split("."))
    where = source
    for depth in range(len(loc), 0, -1):
        if loc[:depth] in overridden:
            where = "command-line override"
            break
        line = lines.get((*prefix, *loc[:depth]))
        if line is not None and source:
            where = f"{source}:{line}"
            break
    return ConfigProblem(key, message, where)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> SFTConfig:
    """Load a run config from a YAML file or an SFTJob manifest (its `spec.training`), then apply overrides."""
    tree: Any = {}
    lines: dict[KeyPath, int] = {}
    prefix: KeyPath = ()
    source: str | None = None
    if path is not None:
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
        if isinstance(tree, dict) and tree.get("kind") == "SFTJob":
            prefix = ("spec", "training")
            tree = tree.get("spec", {}).get("training", {})
    overridden: set[KeyPath] = set()
    for text in overrides or []:
        key, value = parse_override(text)
        if isinstance(tree, dict):
            set_dotted(tree, key, value)
        overridden.add(key)
    return validate(tree, source=source, lines=lines, prefix=prefix, overridden=overridden)
