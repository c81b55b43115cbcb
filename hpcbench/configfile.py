"""The one loader of the YAML files users write: site configs, sweep specs, reference files.

Raw text → bounded YAML parse → JSON-schema validation → the caller's dataclasses. Every file
goes through the same steps and every mistake reads the same way: ``FILE: KEY.PATH[3]: what is
wrong, the bad value (cut to a short excerpt) and what would be valid (the closest valid key)``.

The parse is bounded before anything looks at the data, so that a hostile or broken file is one
line and exit 2, fast, never a traceback, a hang or a multi-megabyte message: the file size
(:data:`MAX_FILE_BYTES`), the nesting depth (:data:`MAX_DEPTH`), the size of the data once YAML
aliases are expanded (:data:`MAX_NODES`, the "billion laughs" bomb) and the digits of an integer
(:data:`MAX_INT_DIGITS`). A key that appears twice in one mapping is an error (PyYAML silently
keeps the last one).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from hpcbench.errors import ConfigError, closest, excerpt

# Far above any real file (the shipped site configs are 1-3 KB; a 256-node sweep grid is a few
# KB), far below what makes the parser slow (PyYAML parses about 1 MB/s).
MAX_FILE_BYTES = 1024 * 1024
MAX_DEPTH = 64
# Nodes of the data once every alias is expanded: what a validator or an error message walks.
MAX_NODES = 100_000
MAX_INT_DIGITS = 30
# Longest one-line message: a value echoed in an error is an excerpt, never the whole value.
MAX_MESSAGE_CHARS = 2000


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys, deep nesting, alias bombs and huge integers."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        # The composer recurses once per level: bound the depth before Python's stack does.
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                mark = self.peek_event().start_mark
                raise ConfigError(
                    f"line {mark.line + 1} column {mark.column + 1}: nested more than "
                    f"{MAX_DEPTH} levels deep"
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def get_single_node(self) -> Any:
        node = super().get_single_node()
        if node is not None:
            size = _expanded_size(node, {})
            if size > MAX_NODES:
                raise ConfigError(
                    f"the data holds more than {MAX_NODES:,} values once its YAML aliases are "
                    f"expanded: an alias bomb, or a file that is not a config"
                )
        return node


def _expanded_size(node: yaml.Node, sizes: dict[int, int]) -> int:
    """Values in the data under ``node`` with every alias expanded (memoised: linear time)."""
    known = sizes.get(id(node))
    if known is not None:
        return known
    total = 1
    if isinstance(node, yaml.SequenceNode):
        total += sum(_expanded_size(child, sizes) for child in node.value)
    elif isinstance(node, yaml.MappingNode):
        total += sum(_expanded_size(k, sizes) + _expanded_size(v, sizes) for k, v in node.value)
    # Capped, so that a bomb's size stays a small number while it is summed.
    sizes[id(node)] = min(total, MAX_NODES + 1)
    return sizes[id(node)]


def _construct_mapping(loader: _BoundedLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    mapping: dict[Any, Any] = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in mapping:
            mark = key_node.start_mark
            raise ConfigError(
                f"line {mark.line + 1} column {mark.column + 1}: key {excerpt(key)} appears twice"
            )
        mapping[key] = loader.construct_object(value_node, deep=True)
    return mapping


def _construct_int(loader: _BoundedLoader, node: yaml.ScalarNode) -> int:
    # Digits of any base (0x, 0o, 0b prefixes count too: a bound, not a measure).
    digits = sum(c.isalnum() for c in str(node.value))
    if digits > MAX_INT_DIGITS:
        mark = node.start_mark
        raise ConfigError(
            f"line {mark.line + 1} column {mark.column + 1}: an integer of {digits} digits (at "
            f"most {MAX_INT_DIGITS})"
        )
    value: int = loader.construct_yaml_int(node)
    return value


_BoundedLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_BoundedLoader.add_constructor("tag:yaml.org,2002:int", _construct_int)


def parse_yaml(text: str, where: str) -> Any:
    """Parse YAML text within the bounds; any mistake is one-line :class:`ConfigError`."""
    try:
        return yaml.load(text, Loader=_BoundedLoader)  # a SafeLoader subclass
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        at = f" at line {mark.line + 1} column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{where}: malformed YAML{at}: {exc.problem}") from None
    except yaml.YAMLError as exc:
        # e.g. ReaderError (a control character) spans two lines: keep one.
        raise ConfigError(f"{where}: malformed YAML: {' '.join(str(exc).split())}") from None
    except RecursionError:  # pragma: no cover - the depth bound comes first
        raise ConfigError(f"{where}: nested too deeply") from None


def read_yaml_file(path: str | os.PathLike[str], what: str) -> Any:
    """Read and parse the YAML file ``path`` (``what``: e.g. "site config"), size first."""
    file = Path(path)
    try:
        with open(file, "rb") as handle:
            raw = handle.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(f"{file}: {what} not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{file}: {what} is a directory, not a YAML file") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {file}: {exc.strerror or exc}") from None
    if len(raw) > MAX_FILE_BYTES:
        raise ConfigError(
            f"{file}: more than {MAX_FILE_BYTES // 1024} KiB; a {what} is a few KB of YAML "
            f"(is this the right file?)"
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{file}: not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start})"
        ) from None
    return parse_yaml(text, str(file))


# ----------------------------------------------------------------------------- validation
def key_path(parts: Sequence[Any]) -> str:
    """Spell a JSON path the way users read it.

    >>> key_path(["node_types", "gpu", "topology", "gpus", 3, "numa_node"])
    'node_types.gpu.topology.gpus[3].numa_node'
    >>> key_path([])
    '(top level)'
    >>> key_path(["node_types", "a b", None])
    "node_types['a b'][None]"
    """
    out = ""
    for part in parts:
        if isinstance(part, int) and not isinstance(part, bool):
            out += f"[{part}]"
        elif isinstance(part, str) and re.fullmatch(r"[A-Za-z0-9_.-]+", part):
            out += f".{part}" if out else part
        else:
            # A key one cannot type plainly (a line break, a space, a None key): quoted, so
            # the message stays one line and shows the key exactly.
            out += f"[{excerpt(part, 40)}]"
    return out or "(top level)"


def validate(data: Any, schema: Mapping[str, Any], where: str) -> None:
    """Validate ``data`` against a JSON schema; the first mistake is a one-line ConfigError."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(schema)
    errors = list(validator.iter_errors(data))
    if errors:
        message = f"{where}: {schema_message(_most_specific(errors))}"
        if len(message) > MAX_MESSAGE_CHARS:
            message = message[: MAX_MESSAGE_CHARS - 1] + "…"
        raise ConfigError(message)


def _most_specific(errors: Sequence[Any]) -> Any:
    """The error a user should read first: an unknown key, else the deepest precise one."""
    import jsonschema

    leaves = [leaf for e in errors for leaf in _leaves(e)]
    for validator in ("additionalProperties", "enum"):
        found = [e for e in leaves if e.validator == validator]
        if found:
            return min(found, key=lambda e: (len(e.absolute_path), list(map(str, e.path))))
    return jsonschema.exceptions.best_match(errors)


def _leaves(error: Any) -> list[Any]:
    # propertyNames and oneOf carry the precise reason in their context; a oneOf on a mapping
    # with an unknown key is best said as that key, on anything else as the oneOf itself.
    if error.validator == "propertyNames" and error.context:
        return list(error.context)
    if error.validator == "oneOf" and isinstance(error.instance, Mapping):
        keys = [e for e in error.context or () if e.validator == "additionalProperties"]
        if keys:
            return keys
    return [error]


def schema_message(error: Any) -> str:
    """One line for one jsonschema ValidationError: key path, bad value, what is valid."""
    path = list(error.absolute_path)
    value = excerpt(error.instance)
    if error.validator == "additionalProperties" and isinstance(error.instance, Mapping):
        allowed = sorted(error.schema.get("properties", {}))
        # YAML keys need not be strings ("? " makes a None key, "1:" an int): compare as text.
        extra = sorted(str(k) for k in error.instance if str(k) not in allowed)
        if extra and allowed:
            key = extra[0]
            return (
                f"{key_path([*path, key])}: unknown key {excerpt(key)}{closest(key, allowed)} "
                f"(valid keys here: {', '.join(allowed)})"
            )
    if error.validator == "enum" and "propertyNames" in error.absolute_schema_path:
        choices = [str(c) for c in error.validator_value]
        return (
            f"{key_path(path)}: unknown setting {value}{closest(str(error.instance), choices)} "
            f"(valid: {', '.join(choices)})"
        )
    if error.validator == "required":
        missing = [k for k in error.validator_value if k not in error.instance]
        return f"{key_path(path)}: {excerpt(missing[0] if missing else '?')} is missing"
    if error.validator == "type":
        expected = error.validator_value
        expected_text = " or ".join(expected) if isinstance(expected, list) else expected
        hint = ""
        if "string" in str(expected) and isinstance(error.instance, int | float):
            hint = ' (quote it in YAML, e.g. "22.05")'
        return (
            f"{key_path(path)}: expected {expected_text}, got {value}"
            f" ({type(error.instance).__name__}){hint}"
        )
    if error.validator == "enum":
        listed = ", ".join(repr(c) for c in error.validator_value)
        suggestion = closest(str(error.instance), [str(c) for c in error.validator_value])
        return f"{key_path(path)}: {value} is not allowed{suggestion} (choices: {listed})"
    if error.validator == "pattern" and path and path[-1] == "slurm_version":
        return f'{key_path(path)}: {value} is not a Slurm version like "22.05"'
    described = error.schema.get("description") if isinstance(error.schema, Mapping) else None
    if error.validator == "oneOf" and described:
        return f"{key_path(path)}: {value}: {described}"
    # jsonschema's own text starts with the whole value: put the excerpt in its place.
    text = str(error.message)
    full = repr(error.instance)
    if text.startswith(full):
        text = value + text[len(full) :]
    return f"{key_path(path)}: {text}"
