"""Before a model loads: everything a user can get wrong, and whether to start, replace or resume a run.

Both stages (sft and cls) and the torchrun parent go through here, so a
mistake in the config, the data, the template or the output directory stops
the run in one line with nothing written.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import hashlib
import importlib.util
import json
import logging
import os
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
import torch

from instructemo.config.schema import RESUME_NEUTRAL_KEYS, Config, union_members
from instructemo.data.datasets import Split, load_run_split, run_spec, spec_options
from instructemo.data.splits import split_location, training_location
from instructemo.errors import UserError, shown
from instructemo.prompts.builder import compile_template, render_user_turn, template_source
from instructemo.run.directory import COMPLETE, TENSORBOARD_DIR, RunDir, checkpoint_progress, last_complete_checkpoint
from instructemo.run.fileio import json_text
from instructemo.train.launch import inside_launcher

log = logging.getLogger(__name__)


@dataclass
class TrainingPlan:
    """What check_before_training found: the rows to train on, the template, the selection rows, the run's fingerprint."""

    train: Split
    template: jinja2.Template
    template_text: str  # kept in the run, so it prompts the same way wherever it is copied
    select: Split | None
    fingerprint: dict


def check_before_training(cfg: Config, train: Split | None = None) -> TrainingPlan:
    """Everything a user can get wrong, checked before a model loads; `train` replaces cfg.dataset's rows (cv folds)."""
    if cfg.few_shot:
        raise UserError(
            "few_shot is for prompting a model without training (generate-eval, predict, serve); "
            "remove it to train (sft learns from the rows themselves)"
        )
    if train is None:
        check_splits_apart(cfg)
        train = load_run_split(cfg, "train", max_samples=cfg.max_samples)
    present = sorted({label for record in train.records for label in record.labels})
    if not train.label_space.multi_label and len(present) < 2:
        raise UserError(
            f"the training rows of {cfg.dataset} hold one class only ({', '.join(present) or 'none'}): a classifier "
            "needs rows of at least two; add rows of the other classes"
        )
    template_text, origin = template_source(cfg.template, train.template)
    template = compile_template(template_text, origin)
    if cfg.stage == "sft":
        render_user_turn(template, train.records[0].text, train.label_space)  # a template error surfaces now
    if cfg.do_eval:
        load_run_split(cfg, "eval", label_space=train.label_space, max_samples=cfg.max_eval_samples)
    select = _selection_split(cfg, train) if cfg.select_best else None
    if cfg.report_to != "none" and importlib.util.find_spec(cfg.report_to) is None:
        raise UserError(f"report_to: {cfg.report_to} needs its package: pip install {cfg.report_to}")
    check_engines(cfg)
    check_training_args(cfg)
    plan = TrainingPlan(train, template, template_text, select, fingerprint(cfg, train))
    if starts_the_run():
        resume_point(cfg, plan.fingerprint, check_only=True)
    return plan


def check_splits_apart(cfg: Config) -> None:
    """The rows that judge the run (eval with do_eval, dev with select_best) are not its training rows."""
    trained_on = training_location(cfg)  # first: a missing training file is the error to report
    roles = [("eval_dataset", "eval", "test")] if cfg.do_eval else []
    roles += [("select_dataset", "dev", "dev")] if cfg.select_best else []
    for key, role, default_split in roles:
        spec = run_spec(cfg, role)
        if split_location(spec, cfg.dataset_dir, default_split, **spec_options(cfg)) == trained_on:
            raise UserError(
                f"{key} {spec} is the training split ({trained_on}): its scores would not be held out; "
                f"set {key} to a dev or test split, or a file of other rows"
            )


def check_training_args(cfg: Config) -> None:
    """training_args names fields the stage's Trainer arguments have (SFTConfig for sft, TrainingArguments for cls)."""
    if not cfg.training_args:
        return
    if cfg.stage == "sft":
        from trl import SFTConfig as arguments
    else:
        from transformers import TrainingArguments as arguments
    known = {f.name for f in dataclasses.fields(arguments)}
    for key in cfg.training_args:
        if key not in known:
            hint = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
            fix = f"did you mean {hint[0]!r}?" if hint else f"see the {arguments.__name__} documentation for its fields"
            raise UserError(f"training_args sets {key!r}, which {arguments.__name__} does not have; {fix}")
    hints = typing.get_type_hints(arguments)
    for key, value in cfg.training_args.items():  # checked now: a wrong type would fail only after the model loads
        wanted = _type_names(hints[key])
        if wanted and not fits_annotation(value, hints[key]):
            close = difflib.get_close_matches(str(value), _choices(hints[key]), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            hint += " (YAML reads 1e-8 without a dot as text: write 1.0e-8)" if _number_as_text(value) else ""
            raise UserError(f"training_args {key} must be {wanted}, got {value!r}{hint}")


def _number_as_text(value) -> bool:
    if not isinstance(value, str):
        return False
    try:
        float(value)
    except ValueError:
        return False
    return True


def _choices(hint) -> list[str]:
    """The values of an argument spelt as text from an enum (lr_scheduler_type, optim, save_strategy ...)."""
    return [
        m.value for part in union_members(hint) if isinstance(part, type) and issubclass(part, enum.Enum) for m in part
    ]


def fits_annotation(value, hint) -> bool:
    """Whether a YAML value fits a Trainer argument's annotation (numbers, flags, text, lists, choices)."""
    if _choices(hint) and isinstance(value, str):
        return value in _choices(hint)
    if len(union_members(hint)) > 1:
        return any(fits_annotation(value, part) for part in union_members(hint))
    if typing.get_origin(hint) is typing.Literal:
        return value in typing.get_args(hint)
    origin = typing.get_origin(hint) or hint
    if hint is type(None):
        return value is None
    if origin is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if origin is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin in (bool, str, dict, list):
        return isinstance(value, origin)
    return True  # an argument of another kind (an object): the Trainer checks it


def _type_names(hint) -> str:
    """How a message names what an argument takes ("" for kinds it does not check)."""
    if _choices(hint):
        return f"one of {shown(_choices(hint), 8)}"
    parts = union_members(hint)
    names = {
        float: "a number",
        int: "a whole number",
        bool: "true or false",
        str: "text",
        dict: "a mapping",
        list: "a list",
        type(None): "null",
    }
    kinds = [names.get(typing.get_origin(part) or part) for part in parts]
    if None in kinds:
        return ""  # an object: the Trainer's own message names what it takes
    return " or ".join(dict.fromkeys(kinds))


def fingerprint(cfg: Config, train: Split) -> dict:
    """What makes two trainings the same run: the settings that change training, the rows and the label space."""
    digest = hashlib.sha256()
    for record in train.records:
        digest.update(json.dumps([record.text, list(record.labels)]).encode("utf-8"))
    settings = {k: v for k, v in cfg.to_dict().items() if k not in RESUME_NEUTRAL_KEYS}
    value = {
        "settings": settings,
        "data": {"rows": len(train.records), "sha256": digest.hexdigest()[:16]},
        "label_space": train.label_space.to_dict(),
    }
    return json.loads(json_text(value))  # as it reads back from a file, so comparisons are like for like


def starts_the_run() -> bool:
    """Whether this process prepares output_dir: a plain run, or the first worker of a torchrun we did not launch."""
    if not inside_launcher():
        return True
    return os.environ.get("INSTRUCTEMO_RUN_STARTED") != "1" and os.environ.get("RANK", "0") == "0"


def resume_point(cfg: Config, fingerprint: dict, check_only: bool = False) -> tuple[Path | None, dict]:
    """The checkpoint to resume from (None: start afresh) and its progress record; prepares output_dir unless check_only.

    resume: auto continues the newest whole checkpoint of an unfinished run,
    and starts over (with a warning) when it has none. A checkpoint of a run
    with other settings, data or labels is refused, with the differences.
    """
    run = RunDir(cfg.output_dir)
    manifest = run.manifest() if run.path.is_dir() else None
    checkpoint = None
    if cfg.resume == "auto":
        if manifest is not None and manifest["state"] == COMPLETE:
            raise UserError(
                f"resume: auto, but the run in {run.path} finished; nothing to resume (set "
                "overwrite_output_dir: true to train again, or choose another output_dir)"
            )
        checkpoint = last_complete_checkpoint(run.path) if manifest is not None else None
        if manifest is not None and checkpoint is None:
            log.warning("resume: auto found no whole checkpoint in %s; starting the run over", run.path)
    elif cfg.resume != "none":
        checkpoint = Path(cfg.resume)
        if checkpoint_progress(checkpoint) is None:
            raise UserError(
                f"resume: {checkpoint} is not a whole instructemo checkpoint (no trainer_state.json or "
                "progress file); use resume: auto or a checkpoint-N directory of a run"
            )
    progress = checkpoint_progress(checkpoint) if checkpoint is not None else {}
    if checkpoint is not None:
        changes = differences(progress["fingerprint"], fingerprint)
        if changes:
            shown = "; ".join(changes[:6]) + ("; ..." if len(changes) > 6 else "")
            raise UserError(
                f"cannot resume from {checkpoint}: its run differs ({shown}); resume with the same "
                "settings and data, or set overwrite_output_dir: true to start over"
            )
    continues_here = checkpoint is not None and checkpoint.parent.resolve() == run.path.resolve()
    restart = cfg.overwrite_output_dir or (cfg.resume == "auto" and manifest is not None and checkpoint is None)
    if check_only:
        run.check_can_begin("train", replace=restart and not continues_here, keep=continues_here)
    else:
        run.begin("train", replace=restart and not continues_here, keep=continues_here)
        if cfg.report_to == "tensorboard":
            run.record(dirs=[TENSORBOARD_DIR])
    if checkpoint is not None and not check_only:
        log.info("resuming from %s (step %d)", checkpoint, progress["global_step"])
    return checkpoint, progress


def start_run(cfg: Config, fingerprint: dict) -> tuple[RunDir, Path | None, dict]:
    """Prepare output_dir for this run (the launching process only): (run directory, checkpoint, its progress)."""
    if starts_the_run():
        checkpoint, progress = resume_point(cfg, fingerprint)
    else:  # a worker under our torchrun: the parent prepared output_dir
        checkpoint = (
            last_complete_checkpoint(Path(cfg.output_dir))
            if cfg.resume == "auto"
            else (Path(cfg.resume) if cfg.resume != "none" else None)
        )
        progress = checkpoint_progress(checkpoint) if checkpoint is not None else {}
    return RunDir(cfg.output_dir), checkpoint, progress or {}


def check_engines(cfg: Config) -> None:
    """QLoRA and DeepSpeed need hardware or packages this machine may lack: say so before loading anything."""
    if cfg.finetuning_type == "qlora":
        if not torch.cuda.is_available():
            raise UserError(
                "finetuning_type: qlora needs a CUDA GPU (bitsandbytes 4-bit NF4) and this machine has none; use finetuning_type: lora"
            )
        if importlib.util.find_spec("bitsandbytes") is None:
            raise UserError("finetuning_type: qlora needs bitsandbytes: pip install bitsandbytes")
    if cfg.deepspeed:
        path = Path(cfg.deepspeed)
        if not path.is_file():
            raise UserError(f"deepspeed config {path} not found; see examples/deepspeed/")
        try:
            settings = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise UserError(f"deepspeed config {path} is not valid JSON (line {exc.lineno}: {exc.msg})") from None
        stage = (settings.get("zero_optimization") or {}).get("stage") if isinstance(settings, dict) else None
        if cfg.select_best and stage == 3:
            raise UserError(
                f"select_best keeps a copy of the best weights, and under ZeRO-3 ({path}) each process holds only a "
                "shard of them; use a ZeRO-2 config (examples/deepspeed/ds_z2.json) with select_best, or set "
                "select_best: false"
            )
        if importlib.util.find_spec("deepspeed") is None:
            raise UserError("deepspeed: needs the deepspeed package: pip install deepspeed")


def _selection_split(cfg: Config, train: Split) -> Split:
    """The dev rows that pick the checkpoint, checked before any model loads."""
    if cfg.select_metric in ("jaccard", "exact_match") and not train.label_space.multi_label:
        raise UserError(
            f"select_metric {cfg.select_metric} is for multi-label data; use macro_f1, micro_f1 or accuracy"
        )
    return load_run_split(cfg, "dev", label_space=train.label_space, max_samples=cfg.max_select_samples)


def differences(before: dict, now: dict, prefix: str = "") -> list[str]:
    """Human-readable differences between two fingerprints (nested dicts), e.g. "learning_rate 0.0001 -> 0.0005"."""
    changes = []
    for key in sorted(set(before) | set(now)):
        a, b = before.get(key), now.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            changes += differences(a, b, f"{prefix}{key}.")
        elif a != b:
            changes.append(f"{prefix}{key} {_short(a)} -> {_short(b)}")
    return changes


def _short(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= 40 else text[:37] + "..."
