"""Trainer setup shared by both stages: the Trainer classes, their arguments, the run loop and saving the run.

`train.run_sft` (a language-model answer) and `dense.run_cls` (a classification
head) each read top to bottom and call in here for what they share: the peft
config, the TrainingArguments taken from the config, a Trainer that fails on
divergence and orders its batches by `batching`, a `train()` that turns a full
disk into a one-line error, and `save_run`, which stages the model and the
run's files and publishes them at once.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Callable

import torch
import yaml
from transformers import Trainer
from trl import SFTConfig, SFTTrainer

from instructemo.config.schema import TRAINER_KEYS, Config
from instructemo.data.datasets import Split
from instructemo.data.recorded import absolute_paths, data_record
from instructemo.errors import UserError
from instructemo.models.batching import (
    LeftPadCollator,
    forward_after_shared_prefix,
    packed_forward,
    shuffled_length_groups,
)
from instructemo.report.plots import plot_loss
from instructemo.run.directory import (
    CONFIG_FILE,
    DATA_FILES_FILE,
    LABEL_SPACE_FILE,
    LOSS_PLOT_FILE,
    PROMPT_TEMPLATE_FILE,
    SKIPPED_ROWS_FILE,
    STAGING_DIR,
    TRAIN_RESULTS_FILE,
    TRAINER_LOG_FILE,
    RunDir,
    skipped_rows_text,
)
from instructemo.run.fileio import json_text, jsonl_text, write_atomic
from instructemo.train.checkpoints import selection_files
from instructemo.train.monitor import FailOnDivergence, RunMonitor
from instructemo.train.preflight import TrainingPlan

log = logging.getLogger(__name__)


def adapter_config(cfg: Config, task_type: str):
    """The peft config for finetuning_type (None for full fine-tuning); task_type CAUSAL_LM or SEQ_CLS."""
    from peft import IA3Config, LoraConfig

    named = [m.strip() for m in cfg.lora_target.split(",") if m.strip()]
    # A classification head is new: peft trains it in full (modules_to_save), so no adapter goes inside it.
    head = r".*\b(classifier|pre_classifier|score)(\..*)?$" if task_type == "SEQ_CLS" else None
    if cfg.finetuning_type in ("lora", "qlora"):
        return LoraConfig(
            r=cfg.lora_rank,
            lora_alpha=cfg.resolved_lora_alpha,
            lora_dropout=cfg.lora_dropout,
            target_modules="all-linear" if cfg.lora_target == "all" else named,
            task_type=task_type,
            exclude_modules=head,
        )
    if cfg.finetuning_type == "ia3":
        # IA3 scales keys, values and the MLP output; "all" lets peft pick them for the architecture.
        return IA3Config(
            task_type=task_type,
            target_modules=None if cfg.lora_target == "all" else named,
            feedforward_modules=None if cfg.lora_target == "all" else [],
            exclude_modules=head,
        )
    return None


def trainer_arguments(cfg: Config, bf16: bool, packed: bool = False) -> dict:
    """The TrainingArguments both stages take from the config (`packed`: sft packs its rows): the trainer keys under
    their own names (config.TRAINER_KEYS), the fields derived from other keys, then training_args as given."""
    if cfg.report_to == "wandb" and not os.environ.get("WANDB_API_KEY"):
        os.environ.setdefault("WANDB_MODE", "offline")  # no account needed; `wandb sync` uploads later
    return {
        **{name: getattr(cfg, name) for name in TRAINER_KEYS},
        "bf16": bf16,
        "use_cpu": cfg.device == "cpu" or not torch.cuda.is_available(),
        "data_seed": cfg.seed,
        "disable_tqdm": False,  # the progress bar with ETA, even with library logs quiet
        "save_strategy": "steps" if cfg.save_steps else "no",
        "save_steps": cfg.save_steps or 500,
        "report_to": [] if cfg.report_to == "none" else [cfg.report_to],
        # Length-grouped batches waste little compute on padding (in shuffled order: shuffled_length_groups), but
        # each holds texts of one length; packed rows skip padding in random batches, which learned better.
        "train_sampling_strategy": "group_by_length" if _grouped(cfg, packed) else "random",
        **(cfg.training_args or {}),
    }


def _grouped(cfg: Config, packed: bool) -> bool:
    return not packed if cfg.group_by_length == "auto" else bool(cfg.group_by_length)


def _can_share_prefix(cfg: Config, model) -> bool:
    """Shared-prefix batches (LeftPadCollator) need one process, no checkpointing and an attention that takes a padded cache.

    Several processes (DDP, DeepSpeed) expect one forward call per step;
    FlashAttention-2 cannot mask padding that sits after cached keys.
    """
    single = int(os.environ.get("WORLD_SIZE", "1")) == 1 and not cfg.deepspeed
    attention = model.config._attn_implementation or ""
    return cfg.shared_prefix and single and not cfg.gradient_checkpointing and not attention.startswith("flash")


def _collator(cfg: Config, model, tokenizer) -> LeftPadCollator:
    share = _can_share_prefix(cfg, model)
    if cfg.packing and not share:
        log.info(
            "packing needs the shared prefix (one process, no FlashAttention-2 or gradient checkpointing, "
            "shared_prefix: true): training on padded%s rows",
            " length-grouped" if _grouped(cfg, False) else "",
        )
    return LeftPadCollator(tokenizer.pad_token_id, share_prefix=share, pack=cfg.packing)


def build_sft_trainer(cfg: Config, model, tokenizer, examples: list[dict], bf16: bool):
    from datasets import Dataset

    peft_config = adapter_config(cfg, "CAUSAL_LM")
    collator = _collator(cfg, model, tokenizer)
    args = SFTConfig(
        **trainer_arguments(cfg, bf16, packed=collator.pack),
        # PromptBuilder already cut each text so prompt and answer fit cutoff_len. trl's own cut would take the
        # answer's end (or the whole row, silently) off a row that re-tokenizes a few tokens longer.
        max_length=None,
        completion_only_loss=True,
        dataset_num_proc=None,
    )
    try:
        return AnswerOnlySFTTrainer(
            model=model,
            args=args,
            train_dataset=Dataset.from_list(examples),
            processing_class=tokenizer,
            peft_config=peft_config,
            data_collator=collator,
        )
    except ValueError as exc:
        if "target modules" in str(exc) or "target_modules" in str(exc):
            raise UserError(
                f"lora_target {cfg.lora_target!r} does not fit this model ({str(exc).splitlines()[0]}); "
                "name its modules, e.g. lora_target: q_proj,v_proj"
            ) from None
        raise


class AnswerOnlySFTTrainer(FailOnDivergence, SFTTrainer):
    """SFTTrainer whose loss projects only the answer positions through the LM head.

    A classification answer is a few tokens after a prompt of dozens, and
    the LM head (vocabulary x hidden) is a large share of a small model's
    compute. Asking the model for `logits_to_keep` = the answer span keeps
    the forward call whole (DDP and DeepSpeed see it) while skipping the
    head and softmax on every prompt position.
    """

    _get_train_sampler = shuffled_length_groups

    def create_model_card(self, *args, **kwargs):
        """None: trl writes its hub card into output_dir at every checkpoint, outside the run's manifest."""

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        self._signature_columns = [*self._signature_columns, "weight"]  # label_balancing: loss_weight

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs.pop("labels")
        weights = inputs.pop("weights", None)
        token_weights = inputs.pop("token_weights", None)
        if "segments" in inputs:
            outputs, target_columns = packed_forward(model, inputs, labels)
            logits = outputs.logits.float()
            targets = labels[:, target_columns]
            if token_weights is not None:
                token_weights = token_weights[:, target_columns]
        else:
            answer_columns = (labels != -100).any(dim=0).nonzero()
            first = int(answer_columns[0]) if len(answer_columns) else labels.shape[1] - 1
            keep = labels.shape[1] - first + 1  # logits at position t predict token t + 1
            prefix_ids = inputs.pop("prefix_ids", None)
            if prefix_ids is None:
                outputs = model(**inputs, use_cache=False, logits_to_keep=keep)
            else:
                outputs = forward_after_shared_prefix(model, prefix_ids, inputs, keep)
            logits = outputs.logits[:, :-1].float()
            targets = labels[:, first:]
        token_loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100, reduction="none"
        ).view(targets.shape)
        if weights is not None:
            token_loss = token_loss * weights.to(token_loss.device)[:, None]
        if token_weights is not None:
            token_loss = token_loss * token_weights.to(token_loss.device)
        loss = token_loss.sum()
        if num_items_in_batch is None:
            loss = loss / (targets != -100).sum().clamp(min=1)
        else:
            loss = loss / num_items_in_batch
            if self.args.average_tokens_across_devices:
                loss = loss * self.accelerator.num_processes
        return (loss, outputs) if return_outputs else loss


class ClassifierTrainer(FailOnDivergence, Trainer):
    """transformers' Trainer for a classification head, with the same divergence check and batch order as sft."""

    _get_train_sampler = shuffled_length_groups


def train_and_save(
    cfg: Config,
    run: RunDir,
    trainer,
    tokenizer,
    plan: TrainingPlan,
    model_path: str,
    rows: int,
    checkpoint: Path | None,
    progress: dict,
    selector,
    finish: Callable[[Path], None] | None = None,
) -> Path:
    """What both stages do once their Trainer is built: watch it (after the selector, whose files the monitor's
    progress file then marks whole), train or finish a resumed run, and save the run with its selection."""
    monitor = RunMonitor(run, plan.fingerprint, progress.get("train_seconds", 0.0), trainer.is_world_process_zero())
    trainer.add_callback(monitor)
    result = train_until_done(trainer, checkpoint, monitor)
    save_run(
        cfg,
        run,
        trainer,
        tokenizer,
        plan,
        model_path,
        rows=rows,
        monitor=monitor,
        result=result,
        resumed_from=progress.get("global_step"),
        extra=selection_files(selector, trainer.model, result.global_step),
        finish=finish,
    )
    return run.path


def train_until_done(trainer, checkpoint: Path | None, monitor: RunMonitor):
    """trainer.train(); a checkpoint that cannot be written (a full disk) is a one-line error, the run left incomplete.

    torch and safetensors word a failed write in their own exception types, so
    any failure while the Trainer writes a checkpoint is taken for one.
    """
    try:
        return trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    except Exception as exc:
        _close_progress_bar(trainer)  # so the one-line error is the last thing printed
        if monitor.saving is not None:
            where = Path(trainer.args.output_dir) / monitor.saving
            raise UserError(
                f"training stopped: could not write a checkpoint to {where} ({_first_line(exc)}); free "
                "space (or fix the folder's permissions), then continue with resume: auto"
            ) from exc
        raise


def _close_progress_bar(trainer) -> None:
    from transformers.trainer_callback import ProgressCallback

    for callback in trainer.callback_handler.callbacks:
        if isinstance(callback, ProgressCallback) and callback.training_bar is not None:
            callback.training_bar.close()
            callback.training_bar = None


def save_run(
    cfg: Config,
    run: RunDir,
    trainer,
    tokenizer,
    plan: TrainingPlan,
    model_path: str,
    *,
    rows: int,
    monitor: RunMonitor,
    result,
    resumed_from: int | None = None,
    extra: dict[str, str] | None = None,
    finish: Callable[[Path], None] | None = None,
) -> None:
    """The model and everything a person, generate-eval and compare need, staged, then moved into place at once.

    `extra`: more files for the run (name -> text); `finish(staging)` runs last
    on the staged run (stage head calibrates its thresholds there).
    """
    main = trainer.is_world_process_zero()
    history = trainer.state.log_history
    files = {}
    if main:
        train = plan.train
        resolved = {
            **cfg.to_dict(),
            **absolute_paths(cfg),  # read from any folder, the run's config names the same files
            "model_path": model_path,
            "template_resolved": cfg.template if cfg.template != "auto" else train.template,
        }
        files = {
            CONFIG_FILE: yaml.safe_dump(resolved, sort_keys=False),
            LABEL_SPACE_FILE: json_text(train.label_space.to_dict()),
            DATA_FILES_FILE: data_record(cfg, train, plan.select),
            TRAINER_LOG_FILE: jsonl_text(history),
            TRAIN_RESULTS_FILE: json_text(
                train_results(cfg, trainer, result, rows, monitor.train_seconds, resumed_from)
            ),
            **({PROMPT_TEMPLATE_FILE: plan.template_text} if cfg.stage == "sft" else {}),
            **extra_files(train),
            **(extra or {}),
        }
    staging = run.staging() if main else run.path / STAGING_DIR
    try:
        trainer.save_model(str(staging))  # every process takes part (DeepSpeed ZeRO-3 gathers the weights)
        if not main:
            return  # in multi-process runs the first process writes the rest
        tokenizer.save_pretrained(str(staging))
        for name, text in files.items():
            write_atomic(staging / name, text)
        plot_loss(history, staging / LOSS_PLOT_FILE)
    except Exception as exc:  # only files are written here: a failure is the disk's or the folder's
        shutil.rmtree(staging, ignore_errors=True)
        raise UserError(
            f"saving the trained run to {run.path} failed ({_first_line(exc)}); it is marked incomplete: "
            "free space (or fix the folder's permissions), then continue with resume: auto"
        ) from exc
    run.publish(finish or (lambda staged: None))  # finish adds its files to the staged run; then all move into place
    log.info("saved %s %s to %s (%.0fs)", cfg.stage, cfg.finetuning_type, run.path, monitor.train_seconds)


def extra_files(train: Split) -> dict[str, str]:
    """skipped_rows.jsonl when on_bad_rows: skip left rows out, so none is lost silently."""
    return {SKIPPED_ROWS_FILE: skipped_rows_text(train.skipped)} if train.skipped else {}


def train_results(cfg: Config, trainer, result, rows: int, train_seconds: float, resumed_from: int | None) -> dict:
    """Figures for the whole run, a resumed one included: time, throughput, losses, parameters."""
    args = trainer.args
    steps = result.global_step
    if cfg.max_steps == -1:
        examples = rows * cfg.num_train_epochs
    else:
        examples = steps * args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
    parameters = list(trainer.model.parameters())
    losses = [(h["step"], h["loss"]) for h in trainer.state.log_history if "loss" in h and "step" in h]
    spans = [step - previous for (step, _), previous in zip(losses, [0] + [s for s, _ in losses[:-1]])]
    return {
        "stage": cfg.stage,
        "train_rows": rows,
        "train_seconds": round(train_seconds, 1),
        "train_examples_per_second": round(examples / train_seconds, 2) if train_seconds > 0 else None,
        "global_steps": steps,
        "resumed_from_step": resumed_from,
        "processes": args.world_size,
        "final_loss": losses[-1][1] if losses else None,
        "mean_loss": sum(loss * span for (_, loss), span in zip(losses, spans)) / sum(spans)
        if losses
        # with no loss logged, the Trainer's own mean, which counts only this session's steps after a resume
        else (result.training_loss if resumed_from is None else None),
        "trainable_parameters": sum(p.numel() for p in parameters if p.requires_grad),
        "total_parameters": sum(p.numel() for p in parameters),
    }


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
