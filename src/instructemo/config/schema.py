"""The config as the verbs receive it: the groups' keys in one `Config`, read from YAML and checked before any
heavy work (types, ranges, choices, did-you-mean, renamed values), and the key lists derived from their metadata.

One YAML file drives `instructemo sft` and `instructemo generate-eval`, so an
evaluation reuses the training settings. Key names follow LLaMA-Factory where
it has one, so its users feel at home. The keys themselves are declared in
groups.py.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import math
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from instructemo.config.checks import check_consistency, check_names, typo_hint
from instructemo.config.groups import DataKeys, FinetuningKeys, InferenceKeys, ModelKeys, TuneKeys
from instructemo.errors import UserError
from instructemo.run.directory import CONFIG_FILE
from instructemo.run.fileio import read_yaml_file

log = logging.getLogger(__name__)

# The groups, in the order --help and the docs list them.
GROUPS = (ModelKeys, DataKeys, FinetuningKeys, InferenceKeys, TuneKeys)


@dataclass
class Config(TuneKeys, InferenceKeys, FinetuningKeys, DataKeys, ModelKeys):
    """Every key, as the verbs receive them: the groups' fields in one object (model first, as declared)."""

    @property
    def resolved_lora_alpha(self) -> float:
        return self.lora_alpha if self.lora_alpha is not None else 2.0 * self.lora_rank

    @property
    def resolved_eval_output_dir(self) -> Path:
        return Path(self.eval_output_dir) if self.eval_output_dir else Path(self.output_dir) / "eval"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


FIELDS = {f.name: f for f in dataclasses.fields(Config)}
# Keys passed to the Trainer's arguments under their own names (see _key).
TRAINER_KEYS = tuple(name for name, f in FIELDS.items() if f.metadata["trainer"])
# TrainingArguments / SFTConfig fields instructemo derives from its own keys (trainer.trainer_arguments), with the
# key a user sets instead: training_args may not set them.
DERIVED_TRAINING_ARGS = {trainer: name for name, f in FIELDS.items() for trainer in f.metadata["derives"]}
# Keys that do not change what training computes: a resumed run may differ in these.
RESUME_NEUTRAL_KEYS = frozenset(name for name, f in FIELDS.items() if f.metadata["resume_neutral"])
# What a study is about, and what tune sets for every trial: not searchable.
FIXED_KEYS = frozenset(name for name, f in FIELDS.items() if not f.metadata["tunable"])
# The training settings the web UI's Train tab shows, in the config's order.
WEBUI_KEYS = tuple(name for name, f in FIELDS.items() if f.metadata["webui"])


def keys_by_group() -> dict[str, list[str]]:
    """Every key under its group (the class that declares it), in declaration order."""
    return {group.GROUP: [f.name for f in dataclasses.fields(group)] for group in GROUPS}


_HINTS = typing.get_type_hints(Config)


def describe_keys() -> str:
    """Every key with its default and meaning, for --help."""
    width = max(len(name) for name in FIELDS)
    lines = []
    for name, f in FIELDS.items():
        default = "null" if f.default is None else f.default
        lines.append(f"  {name:<{width}}  {f.metadata['help']} [default: {default}]")
    return "\n".join(lines)


def load_config(path: str | Path | None, overrides: list[str] = ()) -> Config:
    """Read a YAML config, apply key=value overrides, and validate every key."""
    values: dict[str, Any] = {}
    if path is not None:
        values = _run_values(Path(path)) if Path(path).is_dir() else _read_yaml(Path(path))
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise UserError(f"override {item!r} is not key=value; write it like learning_rate=2e-4")
        try:
            values[key.strip()] = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            values[key.strip()] = raw
    return make_config(values)


def make_config(values: dict[str, Any]) -> Config:
    """Build a Config from plain values, rejecting unknown keys, wrong types and impossible values."""
    for key in values:
        if key not in FIELDS:
            hint = difflib.get_close_matches(key, FIELDS, n=1, cutoff=0.6)
            suggestion = f"; did you mean {hint[0]!r}?" if hint else "; run `instructemo sft --help` for the keys"
            raise UserError(f"unknown config key {key!r}{suggestion}")
    checked = {key: _check_value(key, renamed(key, value)) for key, value in values.items()}
    config = Config(**checked)
    check_consistency(config, FIELDS, DERIVED_TRAINING_ARGS)
    return config


# What a run adds to its saved config beside the keys it was trained with.
RUN_DERIVED_KEYS = ("model_path", "template_resolved")
# Values that were renamed: the old spelling (in a user's YAML or an older run's saved config) still works, and a
# log line says what it is called now.
RENAMED_VALUES = {"stage": {"cls": "head"}}


def renamed(key: str, value: Any, say: bool = True) -> Any:
    """The current spelling of a config value (stage: cls is stage: head)."""
    if isinstance(value, str) and value in RENAMED_VALUES.get(key, {}):
        new = RENAMED_VALUES[key][value]
        if say:
            log.info("%s: %s is now called %s: %s (the same thing; the old spelling still works)", key, value, key, new)
        return new
    return value


def saved_stage(directory: Path | None, configured: str) -> str:
    """sft or head: what the trained run in `directory` is (its saved config says), else the configured stage."""
    path = directory / CONFIG_FILE if directory is not None else None
    if path is not None and path.is_file():
        return renamed("stage", (read_yaml_file(path, "run config") or {}).get("stage", "sft"), say=False)
    return configured


def _run_values(run: Path) -> dict[str, Any]:
    """A trained run's directory as a config: the keys it was trained with, and the run itself as output_dir."""
    saved = run / CONFIG_FILE
    if not saved.is_file():
        raise UserError(
            f"{run} is a folder without {CONFIG_FILE}; pass a YAML config, or the output_dir of a finished sft run"
        )
    values = {k: v for k, v in read_yaml_file(saved, "run config").items() if k not in RUN_DERIVED_KEYS}
    return {**values, "output_dir": str(run), "overwrite_output_dir": False}  # never replaces the run it names


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise UserError(
            f"config file {path} not found; pass the path of a YAML file such as examples/smollm2_emotion.yaml"
        )
    data = read_yaml_file(path, "config file")
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"config file {path} must be a mapping of key: value lines, not a {type(data).__name__}")
    return data


def key_types(key: str) -> tuple[type, ...]:
    """The types a config key takes (NoneType among them when it may be null)."""
    return union_members(_HINTS[key])


def union_members(hint: Any) -> tuple[type, ...]:
    """The types an annotation allows: the members of a union (X | Y, Optional[X]), else the annotation itself."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return tuple(t for t in typing.get_args(hint))
    return (hint,)


def _check_value(key: str, value: Any) -> Any:
    allowed = union_members(_HINTS[key])
    meta = FIELDS[key].metadata
    if value is None:
        if type(None) in allowed:
            return None
        raise UserError(f"config key {key!r} needs a value; its default is {FIELDS[key].default!r}")
    if float in allowed and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if float in allowed and isinstance(value, str):
        try:  # YAML 1.1 reads 5e-5 (no dot) as a string
            value = float(value)
        except ValueError:
            pass
    if isinstance(value, float) and not math.isfinite(value):
        raise UserError(f"config key {key!r} must be a finite number, got {value!r}")
    if int in allowed and isinstance(value, float) and value.is_integer() and float not in allowed:
        value = int(value)
    if list in allowed and isinstance(value, str):
        value = [part.strip() for part in value.split(",")]  # labels=joy,sadness on the command line
    if not any(
        isinstance(value, t) and not (t is int and isinstance(value, bool)) for t in allowed if t is not type(None)
    ):
        names = " or ".join(t.__name__ for t in allowed if t is not type(None))
        raise UserError(f"config key {key!r} must be {names}, got {value!r}")
    if isinstance(value, list):
        return check_names(key, value)
    choices = meta["choices"]
    if choices and isinstance(value, str) and value not in choices:
        extra = " or true/false" if bool in allowed else ""
        raise UserError(f"config key {key!r} must be one of {', '.join(choices)}{extra}; got {value!r}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        minimum, maximum = meta["minimum"], meta["maximum"]
        if minimum is not None and value < minimum:
            raise UserError(f"config key {key!r} must be at least {minimum}, got {value!r}")
        if maximum is not None and value > maximum:
            hint = typo_hint(value) if maximum <= 1 else ""
            raise UserError(f"config key {key!r} must be at most {maximum}, got {value!r}{hint}")
    return value
