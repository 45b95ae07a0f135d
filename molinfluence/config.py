"""The config contract: JSON-schema validation with defaults, and messages that name the offending key.

``workflow/schemas/config.schema.yaml`` is the single source of truth for keys, types, ranges and defaults. The
Snakefile calls :func:`validate_config` before any job is planned; tests call it directly.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import functools
import json
import math
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, TypeVar

import yaml

if TYPE_CHECKING:
    # jsonschema is imported where a config is validated, not here: the training, influence and validation modules
    # import this one for from_section, and jsonschema's import (format checkers, their grammars) took seconds of
    # every job's start.
    import jsonschema

SCHEMA_PATH = Path(__file__).resolve().parents[1] / "workflow" / "schemas" / "config.schema.yaml"


T = TypeVar("T")


def from_section(cls: type[T], section: Mapping[str, Any], name: str) -> T:
    """Build the dataclass ``cls`` (TrainConfig, InfluenceArgs, ...) from the config section ``name``.

    Unknown keys are errors naming ``<name>.<key>`` (a typo must not silently fall back to a default); the dataclass
    checks its values through :func:`check_fields` (the schema), so a dataclass built directly from Python is held to
    the same contract.
    """
    if not isinstance(section, Mapping):
        raise ConfigError(f"config key `{name}` must be a mapping of options, got {type(section).__name__}")
    known = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(section) - set(known))
    if unknown:
        close = difflib.get_close_matches(unknown[0], known, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"config: unknown key {unknown[0]!r}{hint} in `{name}`; allowed keys: {', '.join(known)}")
    return cls(**dict(section))


def check_fields(obj: Any, keys: Mapping[str, str], *, error: type[ValueError] | None = None) -> None:
    """Check a config dataclass's values against the schema: the one contract, the one validator, the same messages
    as :func:`validate_config`.

    ``keys`` maps each checked field to its dotted config key (``"lr": "train.lr"``, ``"max_length":
    "model.max_length"``); the values are gathered into their sections and each section is validated against its
    sub-schema, then the section's semantic checks (rules the schema cannot say) run. Raises ``error`` (default
    :class:`ConfigError`, a ValueError) listing every problem by its config key.
    """
    sections: dict[str, dict[str, Any]] = {}
    for name, key in keys.items():
        node = sections
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = _plain(getattr(obj, name))
    problems = []
    for section, values in sections.items():
        problems += _problems(values, section_schema(section), prefix=section)
        if not problems:
            problems += [p for check in SEMANTIC_CHECKS.get(section, ()) if (p := check(values)) is not None]
    if problems:
        raise (error or ConfigError)("invalid configuration:\n  - " + "\n  - ".join(problems))


def _plain(value: Any) -> Any:
    """Tuples as lists (JSON arrays), recursively: dataclasses may keep a tuple that the YAML file writes as a list."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


def schema_default(key: str) -> Any:
    """The schema's default of the dotted config key (KeyError when it has none)."""
    return copy.deepcopy(section_schema(key)["default"])


class ConfigError(ValueError):
    """The configuration breaks the contract; the message names the key and what is allowed."""


def load_schema(path: str | Path = SCHEMA_PATH) -> dict[str, Any]:
    with open(path, encoding="utf-8") as fh:
        return yaml.safe_load(fh)


@functools.cache
def _schema() -> dict[str, Any]:
    return load_schema()


def section_schema(key: str) -> dict[str, Any]:
    """The sub-schema of a dotted config key (``"train"``, ``"model.random"``, ``"train.lr"``)."""
    node = _schema()
    for part in key.split("."):
        node = node["properties"][part]
    return node


def _import_jsonschema():
    """``import jsonschema`` without its optional IRI format checker: that import (rfc3987_syntax builds a Lark
    grammar) took about a second of every job's start, and the schema uses no ``format``."""
    if "jsonschema" in sys.modules:
        return sys.modules["jsonschema"]
    blocked = "rfc3987_syntax" not in sys.modules
    if blocked:
        sys.modules["rfc3987_syntax"] = None  # type: ignore[assignment]  # makes its import fail: format unchecked
    try:
        import jsonschema
    finally:
        if blocked and sys.modules.get("rfc3987_syntax", 0) is None:
            del sys.modules["rfc3987_syntax"]
    return jsonschema


@functools.cache
def _validator_class():
    """Draft 7 validator that fills ``default`` values (deep copies) before validating, recursing into filled
    objects."""
    jsonschema = _import_jsonschema()

    validator_class = jsonschema.Draft7Validator
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema) -> Iterator[jsonschema.ValidationError]:
        if isinstance(instance, dict):
            for name, sub in properties.items():
                if isinstance(sub, dict) and "default" in sub and name not in instance:
                    instance[name] = copy.deepcopy(sub["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_class, {"properties": set_defaults})


def _describe(error: jsonschema.ValidationError, prefix: str = "") -> str:
    key = ".".join([prefix] * bool(prefix) + [str(p) for p in error.absolute_path]) or "<top level>"
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        unknown = sorted(set(error.instance) - set(allowed))
        hints = []
        for name in unknown:
            close = difflib.get_close_matches(name, allowed, n=1)
            hints.append(f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        where = "the top level" if key == "<top level>" else f"`{key}`"
        return f"config: unknown key {', '.join(hints)} in {where}; allowed keys: {', '.join(allowed)}"
    if error.validator == "enum":
        return f"config key `{key}`: {error.instance!r} is not allowed; allowed values: {', '.join(map(repr, error.validator_value))}"
    if error.validator == "oneOf":
        desc = error.schema.get("description")
        return f"config key `{key}`: {error.instance!r} is not valid" + (f"; expected {desc}" if desc else "")
    if error.validator == "required":
        return f"config key `{key}`: {error.message}"
    return f"config key `{key}`: {error.message}"


def _problems(instance: Any, schema: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Fill defaults into ``instance`` and describe every way it breaks ``schema`` (keys prefixed by ``prefix``)."""
    errors = sorted(_validator_class()(schema).iter_errors(instance), key=lambda e: [str(p) for p in e.absolute_path])
    problems = [_describe(e, prefix) for e in errors]
    problems += _non_finite(instance, prefix)
    return problems


def _non_finite(value: Any, key: str) -> list[str]:
    """NaN and infinity pass every JSON-schema range check (comparisons with NaN are false): refuse them by key."""
    if isinstance(value, float) and not math.isfinite(value):
        return [f"config key `{key or '<top level>'}`: {value!r} is not a finite number"]
    if isinstance(value, Mapping):
        return [p for k, v in value.items() for p in _non_finite(v, f"{key}.{k}" if key else str(k))]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in _non_finite(v, f"{key}.{i}")]
    return []


def validate_config(config: dict[str, Any], schema: dict[str, Any] | None = None) -> dict[str, Any]:
    """Validate in place (filling defaults) and return ``config``; raise :class:`ConfigError` listing every problem."""
    schema = _schema() if schema is None else schema
    problems = _problems(config, schema)
    if not problems:
        for section, checks in SEMANTIC_CHECKS.items():
            problems += [p for check in checks if (p := check(config[section])) is not None]
        problems += [p for check in CONFIG_CHECKS if (p := check(config)) is not None]
    if problems:
        raise ConfigError("invalid configuration:\n  - " + "\n  - ".join(problems))
    return config


# Rules a JSON schema cannot say clearly, by the section they read (run by validate_config and check_fields alike).


def _one_external_source(data: Mapping[str, Any]) -> str | None:
    ext = data.get("external", {})
    if (ext.get("path") is None) == (ext.get("holdout_fraction") is None):
        return (
            "config key `data.external`: set exactly one of `path` (an external labelled table) "
            "or `holdout_fraction` (hold out part of the dataset as the external pool), got "
            f"path={ext.get('path')!r}, holdout_fraction={ext.get('holdout_fraction')!r}"
        )
    return None


def _fractions_leave_training(data: Mapping[str, Any]) -> str | None:
    if data.get("test_fraction", 0) + data.get("validation_fraction", 0) >= 1:
        return "config keys `data.test_fraction` + `data.validation_fraction` must leave a training split (sum < 1)"
    return None


def _layers_exist(config: Mapping[str, Any]) -> str | None:
    params = config["influence"]["params"]
    if isinstance(params, str) and params.startswith("last_layers:") and config["model"]["source"] == "random":
        k = int(params.split(":", 1)[1])
        n = config["model"]["random"]["num_hidden_layers"]
        if k > n:
            return f"config key `influence.params`: last_layers:{k} but the model has {n} layers"
    return None


SEMANTIC_CHECKS = {"data": (_one_external_source, _fractions_leave_training)}
"""Per-section rules beyond the schema: each returns a message naming the key, or None."""
CONFIG_CHECKS = (_layers_exist,)
"""Rules across sections (whole configuration only)."""


# --------------------------------------------------------------------------------------------------------------------
# Documentation: the config-key table of docs/config.md is checked against (and can be printed from) the schema.


def schema_keys(schema: Mapping[str, Any] | None = None, prefix: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every documented config key, dotted, with its sub-schema: the leaves, and the groups (objects with properties,
    e.g. ``model.random``) before their leaves."""
    schema = _schema() if schema is None else schema
    for name, sub in schema.get("properties", {}).items():
        key = f"{prefix}{name}"
        yield key, sub
        if sub.get("type") == "object" and "properties" in sub:
            yield from schema_keys(sub, f"{key}.")


def markdown_table() -> str:
    """The config keys as a Markdown table (key, default, description) generated from the schema."""
    lines = ["| key | default | meaning |", "| --- | --- | --- |"]
    for key, sub in schema_keys():
        if sub.get("type") == "object" and "properties" in sub and key.count(".") == 0:
            continue  # a top-level section: its keys follow
        default = json.dumps(sub["default"]) if "default" in sub and not isinstance(sub.get("default"), dict) else ""
        meaning = " ".join(str(sub.get("description", "")).split())
        if "enum" in sub and "enum" not in meaning:
            meaning = (meaning + "; " if meaning else "") + "one of " + ", ".join(f"`{v}`" for v in sub["enum"])
        lines.append(f"| `{key}` | {f'`{default}`' if default else ''} | {meaning.replace('|', '/')} |")
    return "\n".join(lines)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="The config contract (workflow/schemas/config.schema.yaml).")
    parser.add_argument("--markdown", action="store_true", help="print every config key as a Markdown table")
    parser.add_argument("config", nargs="?", help="a config file to validate (defaults filled, every problem listed)")
    ns = parser.parse_args()
    if ns.markdown:
        print(markdown_table())
    if ns.config:
        with open(ns.config, encoding="utf-8") as fh:
            validate_config(yaml.safe_load(fh) or {})
        print(f"{ns.config}: valid")
