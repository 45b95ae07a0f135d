"""The schema is the one config contract: the dataclasses take their defaults from it, and the config-key table of
docs/config.md documents exactly its keys."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from molinfluence.config import ConfigError, check_fields, schema_default, schema_keys, validate_config
from molinfluence.data import DATA_KEYS, DataConfig
from molinfluence.influence import CGArgs, InfluenceArgs, LissaArgs, ScoringArgs, SpectrumArgs
from molinfluence.regressor import RegressorSpec
from molinfluence.training import TRAIN_KEYS, TrainConfig
from molinfluence.validation import ValidationArgs

REPO = Path(__file__).resolve().parents[1]

DATACLASSES = [
    (TrainConfig, TRAIN_KEYS),
    *((cls, cls.KEYS) for cls in (InfluenceArgs, SpectrumArgs, CGArgs, LissaArgs, ScoringArgs)),
    (ValidationArgs, {f.name: f"validation.{f.name}" for f in dataclasses.fields(ValidationArgs)}),
    (RegressorSpec, {"pooling": "model.pooling", "head_dropout": "model.head_dropout", "max_length": "model.max_length"}),
    (DataConfig, DATA_KEYS),
]


def _default(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


@pytest.mark.parametrize("cls, keys", DATACLASSES, ids=[c[0].__name__ for c in DATACLASSES])
def test_dataclass_defaults_are_the_schema_defaults(cls, keys) -> None:
    """A dataclass built from Python gets the values the pipeline gets from the config file."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    checked = 0
    for name, key in keys.items():
        default = _default(fields[name])
        if default is dataclasses.MISSING:
            continue
        expected = schema_default(key)
        assert (list(default) if isinstance(default, tuple) else default) == expected, f"{cls.__name__}.{name} vs {key}"
        checked += 1
    assert checked >= len(keys) - 1


def test_dataclasses_and_the_config_file_refuse_the_same_value_with_the_same_message() -> None:
    with pytest.raises(ConfigError) as direct:
        TrainConfig(epochs=0)
    with pytest.raises(ConfigError) as from_file:
        validate_config({"data": {"dataset": {"path": "d.csv"}, "external": {"path": "e.csv"}}, "model": {},
                         "train": {"epochs": 0}})
    assert "config key `train.epochs`: 0 is less than the minimum of 1" in str(direct.value)
    assert "config key `train.epochs`: 0 is less than the minimum of 1" in str(from_file.value)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_numbers_are_refused_by_key(bad: float) -> None:
    """NaN passes every JSON-schema range check; the contract refuses it by name."""
    with pytest.raises(ValueError, match=r"`influence\.damping`: (nan|inf) is not a finite number"):
        InfluenceArgs(damping=bad)


def test_check_fields_lists_every_problem() -> None:
    @dataclasses.dataclass
    class Recipe:
        lr: float
        epochs: int

    with pytest.raises(ConfigError) as info:
        check_fields(Recipe(lr=-1.0, epochs="ten"), {"lr": "train.lr", "epochs": "train.epochs"})
    assert "`train.lr`" in str(info.value) and "`train.epochs`" in str(info.value)


CONFIG_DOC = REPO / "docs" / "config.md"


def _documented_keys() -> set[str]:
    """The keys of docs/config.md's config-key table; ``.x`` after ``a.b`` in one cell is ``a.x``."""
    text = CONFIG_DOC.read_text(encoding="utf-8")
    assert text.count("| key | default | meaning |") == 1, f"{CONFIG_DOC}: expected exactly one config-key table"
    table = text.split("| key | default | meaning |", 1)[1].split("\n\n", 1)[0]
    keys: set[str] = set()
    for row in table.splitlines()[2:]:
        cell = row.split("|")[1]
        last = None
        for name in re.findall(r"`([^`]+)`", cell):
            key = f"{last.rsplit('.', 1)[0]}{name}" if name.startswith(".") and last else name
            keys.add(key)
            last = key
    return keys


def test_config_doc_table_documents_exactly_the_schema_keys() -> None:
    documented = _documented_keys()
    schema = dict(schema_keys())
    unknown = sorted(documented - set(schema))
    assert not unknown, f"docs/config.md's config-key table names keys the schema does not have: {unknown}"
    groups = {k for k in schema if "." in k and "properties" in schema[k]}
    missing = [
        k for k, sub in schema.items()
        if "properties" not in sub  # a leaf ...
        and k not in documented
        and not any(k.startswith(g + ".") and g in documented for g in groups)  # ... unless its group is documented
    ]
    assert not missing, f"config keys missing from docs/config.md's config-key table: {missing}"
