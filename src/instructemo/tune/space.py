"""tune's search space: the `tune:` section of a config, checked, and the config one trial trains.

A list is a choice among its values (Optuna's CategoricalDistribution); a
mapping {low, high} a range, on a log scale with `log: true` or in steps of
`step` (IntDistribution for integer keys, FloatDistribution otherwise). Every
value is checked as the config checks it, before any trial starts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from instructemo.config.schema import FIELDS, FIXED_KEYS, Config, key_types, make_config
from instructemo.errors import UserError

DEFAULT_TRIALS = 20
SETTINGS_KEYS = ("trials", "space", "pruner", "startup_trials", "enqueue")


@dataclass
class TuneSettings:
    trials: int
    space: dict[str, Any]  # key -> optuna distribution
    pruner: str
    startup_trials: int
    enqueue: list[dict]


def tune_settings(cfg: Config) -> TuneSettings:
    """The `tune:` section, checked: every key searchable, every value one the config accepts."""
    raw = cfg.tune
    if not raw:
        raise UserError(
            "the config has no tune: section; add one with a search space, e.g. "
            "tune: {space: {learning_rate: {low: 5.0e-5, high: 1.0e-3, log: true}}}"
        )
    unknown = sorted(set(raw) - set(SETTINGS_KEYS))
    if unknown:
        raise UserError(f"tune: has unknown key(s) {unknown}; it takes {', '.join(SETTINGS_KEYS)}")
    space_raw = raw.get("space")
    if not isinstance(space_raw, dict) or not space_raw:
        raise UserError("tune.space must map config keys to choices ([a, b]) or ranges ({low: x, high: y})")
    space = {key: _distribution(cfg, key, spec) for key, spec in space_raw.items()}
    trials = raw.get("trials", DEFAULT_TRIALS)
    startup = raw.get("startup_trials", 2)
    for name, value in (("trials", trials), ("startup_trials", startup)):
        if isinstance(value, bool) or not isinstance(value, int) or value < (1 if name == "trials" else 0):
            raise UserError(
                f"tune.{name} must be a whole number of at least {1 if name == 'trials' else 0}, got {value!r}"
            )
    pruner = raw.get("pruner", "median")
    if pruner not in ("median", "none"):
        raise UserError(f"tune.pruner must be median or none, got {pruner!r}")
    enqueue = raw.get("enqueue") or []
    if not isinstance(enqueue, list) or not all(isinstance(e, dict) for e in enqueue):
        raise UserError("tune.enqueue must be a list of {key: value} settings to try first")
    for settings in enqueue:
        for key, value in settings.items():
            if key not in space:
                raise UserError(f"tune.enqueue sets {key!r}, which is not in tune.space; enqueue only searched keys")
            if not _in_distribution(space[key], value):
                raise UserError(f"tune.enqueue: {key}={value!r} is outside tune.space's {key}")
    return TuneSettings(trials, space, pruner, startup, enqueue)


def _distribution(cfg: Config, key: str, spec: Any):
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if key not in FIELDS:
        raise UserError(f"tune.space names {key!r}, which is not a config key")
    if key in FIXED_KEYS:
        raise UserError(f"tune.space may not search {key!r}: tune fixes it for every trial; set it at the top level")
    if isinstance(spec, list):
        if not spec:
            raise UserError(f"tune.space.{key} lists no choices")
        for value in spec:
            if value is not None and not isinstance(value, (bool, int, float, str)):
                raise UserError(
                    f"tune.space.{key}: a choice must be a number, a word, true/false or null, got {value!r}"
                )
            _check_setting(cfg, key, value)
        if len({json.dumps(v) for v in spec}) != len(spec):
            raise UserError(f"tune.space.{key} repeats a choice: {spec}")
        return CategoricalDistribution(spec)
    if not isinstance(spec, dict) or set(spec) - {"low", "high", "log", "step"} or not {"low", "high"} <= set(spec):
        raise UserError(
            f"tune.space.{key} must be a list of choices or a range {{low: x, high: y}} (with log: true or step: s)"
        )
    low, high, log_scale, step = spec["low"], spec["high"], bool(spec.get("log", False)), spec.get("step")
    low, high = _check_setting(cfg, key, low), _check_setting(cfg, key, high)
    if not isinstance(low, (int, float)) or isinstance(low, bool):
        raise UserError(f"tune.space.{key}: a range needs numbers; {key} takes {low!r}-like values, so list choices")
    if not low < high:
        raise UserError(f"tune.space.{key}: low {low} must be below high {high}")
    if log_scale and low <= 0:
        raise UserError(f"tune.space.{key}: a log range needs low above 0, got {low}")
    if log_scale and step is not None:
        raise UserError(f"tune.space.{key}: give log or step, not both")
    if float not in key_types(key):
        return IntDistribution(int(low), int(high), log=log_scale, step=int(step or 1))
    return FloatDistribution(float(low), float(high), log=log_scale, step=float(step) if step is not None else None)


def _check_setting(cfg: Config, key: str, value: Any) -> Any:
    """`value` as the config takes it for `key` (checked with the rest of the config, as a trial would be)."""
    try:
        return getattr(make_config({**_base_values(cfg), key: value}), key)
    except UserError as exc:
        raise UserError(f"tune.space.{key}: {exc}") from None


def _in_distribution(distribution, value: Any) -> bool:
    from optuna.distributions import CategoricalDistribution

    if isinstance(distribution, CategoricalDistribution):
        return value in distribution.choices
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return distribution.low <= value <= distribution.high


def _base_values(cfg: Config) -> dict:
    return {k: v for k, v in cfg.to_dict().items() if k != "tune"}


def trial_config(cfg: Config, params: dict, output_dir: Path, resume: bool) -> Config:
    """The config one trial trains: the base config, the trial's values, its own output_dir, never the test split."""
    return make_config(
        {
            **_base_values(cfg),
            **params,
            "output_dir": str(output_dir),
            "select_best": True,  # its dev evaluations are the trial's intermediate values
            "do_eval": False,
            "eval_output_dir": None,
            "adapter_name_or_path": None,
            "overwrite_output_dir": False,
            "resume": "auto" if resume else "none",
        }
    )
