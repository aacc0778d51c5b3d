"""The checks a config's values pass beyond their own key's type and range: label names, and keys together."""

from __future__ import annotations

from pathlib import Path

from instructemo.errors import UserError


def typo_hint(value: float) -> str:
    """For 5e4 typed instead of 5e-4: the number with its exponent's sign flipped."""
    mantissa, _, exponent = f"{value:e}".partition("e")
    flipped = float(f"{mantissa}e{-int(exponent)}")
    return f"; did you mean {flipped:g}?" if int(exponent) > 0 else ""


def check_names(key: str, names: list) -> list[str]:
    """A list of label names: non-empty strings (numbers become their text), none repeated."""
    if not names:
        raise UserError(f"config key {key!r} needs at least one name, e.g. {key}: [negative, positive]")
    bad = [n for n in names if isinstance(n, (bool, dict, list)) or n is None or not str(n).strip()]
    if bad:
        raise UserError(f"config key {key!r} must list label names, got {bad[0]!r} in {names}")
    names = [str(n).strip() for n in names]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise UserError(f"config key {key!r} repeats {repeated}; list each label once")
    return names


def check_consistency(config, config_keys, derived_training_args: dict[str, str]) -> None:
    """Values that cannot go together, or that the Trainer's own arguments would fight over."""
    if config.learning_rate <= 0 and config.num_train_epochs > 0:
        raise UserError(f"config key 'learning_rate' must be positive, got {config.learning_rate}")
    if config.num_train_epochs <= 0 and config.max_steps == -1:
        raise UserError(
            f"config key 'num_train_epochs' must be positive (or set max_steps), got {config.num_train_epochs}"
        )
    if config.lora_dropout >= 1:
        raise UserError(f"config key 'lora_dropout' must be below 1, got {config.lora_dropout}")
    if not 0 < config.top_p <= 1:
        raise UserError(f"config key 'top_p' must be in (0, 1], got {config.top_p}")
    if config.max_steps == 0 or config.max_steps < -1:
        raise UserError(f"config key 'max_steps' must be positive or -1, got {config.max_steps}")
    if config.do_sample and config.temperature <= 0:
        raise UserError("config key 'temperature' must be positive when do_sample is true")
    if not 0 < config.gpu_memory_utilization <= 1:
        raise UserError(f"config key 'gpu_memory_utilization' must be in (0, 1], got {config.gpu_memory_utilization}")
    if config.score_threshold is not None and not 0 < config.score_threshold < 1:
        raise UserError(f"config key 'score_threshold' must be in (0, 1), got {config.score_threshold}")
    if isinstance(config.class_weights, dict):
        bad = {
            k: v
            for k, v in config.class_weights.items()
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0
        }
        if bad:
            raise UserError(f"config key 'class_weights' needs non-negative numbers per label, got {bad}")
    for key in config.training_args or {}:
        if key in config_keys:
            raise UserError(f"training_args sets {key!r}, a key of this config: set {key} at the top level instead")
        if key in derived_training_args:
            raise UserError(
                f"training_args sets {key!r}, which instructemo derives from {derived_training_args[key]}: "
                f"set {derived_training_args[key]} instead"
            )
    if not config.output_dir.strip():
        raise UserError("config key 'output_dir' must not be empty")
    if config.eval_output_dir:
        # Everything a config makes instructemo write stays inside output_dir.
        inside = Path(config.eval_output_dir).resolve()
        if inside == Path(config.output_dir).resolve():
            raise UserError(
                f"eval_output_dir {config.eval_output_dir} is output_dir itself; name a folder inside it, "
                "such as its default, output_dir/eval"
            )
        if not inside.is_relative_to(Path(config.output_dir).resolve()):
            raise UserError(
                f"eval_output_dir {config.eval_output_dir} is outside output_dir {config.output_dir}; "
                "put it inside output_dir (or change output_dir)"
            )
