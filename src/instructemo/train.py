"""`instructemo sft`: supervised fine-tuning with trl's SFTTrainer and peft.

Reads top to bottom: validate data, load the model, train, save what a person
and `generate-eval` need.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Callable

import torch
import yaml

from .balance import oversample_counts, rarest_label_weights
from .checkpoints import BestCheckpoint
from .config import Config
from .data import Split, split_source
from .errors import UserError
from .infer.hf import common_prefix_length
from .models import load_causal_lm, load_tokenizer, resolve_model_path, use_bf16
from .monitor import FailOnDivergence, RunMonitor
from .preflight import TrainingPlan, check_before_training, start_run
from .prompts import PromptBuilder
from .report import plot_loss
from .rundir import (
    CONFIG_FILE, LABEL_SPACE_FILE, SELECTION_FILE, SKIPPED_ROWS_FILE, STAGING_DIR, TRAIN_RESULTS_FILE, TRAINER_LOG_FILE,
    LOSS_PLOT_FILE, RunDir, json_text, jsonl_text, skipped_rows_text, write_atomic,
)

log = logging.getLogger(__name__)


def run_sft(cfg: Config, train: Split | None = None) -> Path:
    """Train an adapter (or a full model) into cfg.output_dir and return that directory.

    `train` replaces cfg.dataset's rows (cross-validation passes its folds this way).
    With `stage: cls` the same verb trains a classification head instead (dense.py).
    """
    if cfg.stage == "cls":
        from .dense import run_cls

        return run_cls(cfg, train)
    plan = check_before_training(cfg, train)
    train = plan.train
    bf16 = use_bf16(cfg.bf16)
    model_path = resolve_model_path(cfg.model_name_or_path)
    tokenizer = load_tokenizer(model_path, trust_remote_code=cfg.trust_remote_code)
    log.info("training on %d rows of %s (%s)", len(train.records), cfg.dataset, train.origin)

    builder = PromptBuilder(tokenizer, plan.template, train.label_space, cfg.cutoff_len)
    examples = [builder.training_example(r) for r in train.records]
    if builder.truncated:
        log.warning("%d of %d texts were cut to fit cutoff_len=%d", builder.truncated, len(examples), cfg.cutoff_len)
    examples = _balanced(cfg.label_balancing, [r.labels for r in train.records], examples)

    # Full fine-tuning updates every weight, and a bf16 weight loses any update below 1/256 of itself: the weights
    # stay fp32 (the master copy) while bf16 autocast does the compute. DeepSpeed keeps its own fp32 copy.
    master_fp32 = cfg.finetuning_type == "full" and not cfg.deepspeed
    model = load_causal_lm(model_path, flash_attn=cfg.flash_attn, bf16=bf16 and not master_fp32, four_bit=cfg.finetuning_type == "qlora",
                           trust_remote_code=cfg.trust_remote_code, allow_pickle=cfg.allow_pickle_weights, training=True)
    if cfg.finetuning_type == "qlora":
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing)
    trainer = _build_trainer(cfg, model, tokenizer, examples, bf16)
    longest = max(len(row) for row in trainer.train_dataset["input_ids"])
    if longest > cfg.cutoff_len:
        log.info("the longest row is %d tokens, %d over cutoff_len: kept whole, answer included", longest,
                 longest - cfg.cutoff_len)
    run, checkpoint, progress = start_run(cfg, plan.fingerprint)  # only now: a failure to load leaves output_dir as it was
    selector = None
    if plan.select is not None:
        select = plan.select
        selector = BestCheckpoint(
            tokenizer, [builder.prompt(r.text) for r in select.records], [r.labels for r in select.records],
            train.label_space, metric=cfg.select_metric, every_steps=cfg.select_steps,
            batch_size=cfg.per_device_eval_batch_size, max_new_tokens=cfg.max_new_tokens, source=split_source(select),
        )
        if checkpoint is not None:
            selector.resume_from(checkpoint)
        trainer.add_callback(selector)  # before the monitor, whose progress file marks a checkpoint whole
    monitor = RunMonitor(run, plan.fingerprint, progress.get("train_seconds", 0.0), trainer.is_world_process_zero())
    trainer.add_callback(monitor)
    result = train_until_done(trainer, checkpoint, monitor)
    selection = selector.restore_best(trainer.model, result.global_step) if selector is not None else None
    extra = {SELECTION_FILE: json_text(selection)} if selection is not None else {}
    save_run(cfg, run, trainer, tokenizer, plan, model_path, rows=len(trainer.train_dataset), monitor=monitor, result=result,
             resumed_from=progress.get("global_step"), extra=extra)
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
            raise UserError(f"training stopped: could not write a checkpoint to {where} ({_first_line(exc)}); free "
                            "space (or fix the folder's permissions), then continue with resume: auto") from exc
        raise


def _close_progress_bar(trainer) -> None:
    from transformers.trainer_callback import ProgressCallback

    for callback in trainer.callback_handler.callbacks:
        if isinstance(callback, ProgressCallback) and callback.training_bar is not None:
            callback.training_bar.close()
            callback.training_bar = None


def save_run(cfg: Config, run: RunDir, trainer, tokenizer, plan: TrainingPlan, model_path: str, *, rows: int,
             monitor: RunMonitor, result, resumed_from: int | None = None, extra: dict[str, str] | None = None,
             finish: Callable[[Path], None] | None = None) -> None:
    """The model and everything a person, generate-eval and compare need, staged, then moved into place at once.

    `extra`: more files for the run (name -> text); `finish(staging)` runs last
    on the staged run (stage cls calibrates its thresholds there).
    """
    main = trainer.is_world_process_zero()
    history = trainer.state.log_history
    files = {}
    if main:
        train = plan.train
        resolved = {**cfg.to_dict(), "model_path": model_path,
                    "template_resolved": cfg.template if cfg.template != "auto" else train.template}
        files = {
            CONFIG_FILE: yaml.safe_dump(resolved, sort_keys=False),
            LABEL_SPACE_FILE: json_text(train.label_space.to_dict()),
            TRAINER_LOG_FILE: jsonl_text(history),
            TRAIN_RESULTS_FILE: json_text(train_results(cfg, trainer, result, rows, monitor.train_seconds, resumed_from)),
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
        raise UserError(f"saving the trained run to {run.path} failed ({_first_line(exc)}); it is marked incomplete: "
                        "free space (or fix the folder's permissions), then continue with resume: auto") from exc
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
        "mean_loss": sum(loss * span for (_, loss), span in zip(losses, spans)) / sum(spans) if losses
        # with no loss logged, the Trainer's own mean, which counts only this session's steps after a resume
        else (result.training_loss if resumed_from is None else None),
        "trainable_parameters": sum(p.numel() for p in parameters if p.requires_grad),
        "total_parameters": sum(p.numel() for p in parameters),
    }


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _balanced(policy: str, label_sets: list[tuple[str, ...]], examples: list[dict]) -> list[dict]:
    """The training rows under a label_balancing policy (see balance.py)."""
    if policy == "none":
        return examples
    weights = rarest_label_weights(label_sets)
    if policy == "loss_weight":
        log.info("loss weights by rarest label: %.2f to %.2f", min(weights), max(weights))
        return [{**e, "weight": w} for e, w in zip(examples, weights)]
    counts = oversample_counts(weights)
    log.info("oversampling rare labels: %d rows become %d", len(examples), sum(counts))
    return [e for e, n in zip(examples, counts) for _ in range(n)]


class LeftPadCollator:
    """Pads on the left, so every answer ends at the last position of its row.

    With the answers aligned, the LM head only needs the last few positions
    (see AnswerOnlySFTTrainer). Position ids skip the padding, so each row is
    computed exactly as it would be alone.

    With `share_prefix`, the tokens every row of the batch starts with (the
    system prompt and the instruction: most of a short prompt) are taken out
    and returned once as `prefix_ids`; the trainer encodes them once for the
    batch and the rows continue from there.

    With `pack` (and share_prefix), what is left of the rows is packed instead
    (see `_pack`).
    """

    def __init__(self, pad_token_id: int, share_prefix: bool = False, pack: bool = False):
        self.pad_token_id = pad_token_id
        self.share_prefix = share_prefix
        self.pack = pack and share_prefix

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        prefix_len = _shared_prompt_length(examples) if self.share_prefix else 0
        rows = [(e["input_ids"][prefix_len:], e["labels"][prefix_len:]) for e in examples]
        if self.pack:
            return self._pack(examples, rows, prefix_len)
        width = max(len(ids) for ids, _ in rows)
        input_ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(rows), width), -100, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for row, (ids, targets) in enumerate(rows):
            input_ids[row, width - len(ids) :] = torch.as_tensor(ids)
            labels[row, width - len(ids) :] = torch.as_tensor(targets)
            attention_mask[row, width - len(ids) :] = 1
        position_ids = prefix_len + (attention_mask.cumsum(-1) - 1).clamp(min=0)
        batch = {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids, "labels": labels}
        if prefix_len:
            batch["prefix_ids"] = torch.as_tensor(examples[0]["input_ids"][:prefix_len])[None]
        if "weight" in examples[0]:
            batch["weights"] = torch.tensor([e["weight"] for e in examples], dtype=torch.float32)
        return batch

    def _pack(self, examples: list[dict], rows: list[tuple], prefix_len: int) -> dict[str, torch.Tensor]:
        """The rows after the shared prefix, packed side by side into as few rows as the longest one needs.

        In a batch in random order, one long text pads every row to its
        length; packed, the short rows fill the space instead. `segments`
        numbers the rows that share a packed row (0 is padding), so each
        attends to the prefix and to itself only (`_packed_attention_mask`),
        and position ids restart after the prefix for each: every token is
        computed as in its own row, for the same loss and gradients.
        """
        width = max(len(ids) for ids, _ in rows)
        bins: list[list[int]] = []  # first fit, longest rows first
        room: list[int] = []
        for i in sorted(range(len(rows)), key=lambda i: -len(rows[i][0])):
            size = len(rows[i][0])
            slot = next((b for b, free in enumerate(room) if free >= size), None)
            if slot is None:
                bins.append([])
                room.append(width)
                slot = len(bins) - 1
            bins[slot].append(i)
            room[slot] -= size
        shape = (len(bins), width)
        input_ids = torch.full(shape, self.pad_token_id, dtype=torch.long)
        labels = torch.full(shape, -100, dtype=torch.long)
        position_ids = torch.full(shape, prefix_len, dtype=torch.long)
        segments = torch.zeros(shape, dtype=torch.long)
        weights = torch.zeros(shape, dtype=torch.float32)
        for b, members in enumerate(bins):
            start = 0
            for n, i in enumerate(members, start=1):
                ids, targets = rows[i]
                span = slice(start, start + len(ids))
                input_ids[b, span] = torch.as_tensor(ids)
                labels[b, span] = torch.as_tensor(targets)
                position_ids[b, span] = prefix_len + torch.arange(len(ids))
                segments[b, span] = n
                weights[b, span] = examples[i].get("weight", 1.0)
                start += len(ids)
        batch = {"input_ids": input_ids, "position_ids": position_ids, "segments": segments, "labels": labels}
        if prefix_len:
            batch["prefix_ids"] = torch.as_tensor(examples[0]["input_ids"][:prefix_len])[None]
        if "weight" in examples[0]:
            batch["token_weights"] = weights
        return batch


def _packed_attention_mask(segments: torch.Tensor, prefix_len: int, dtype: torch.dtype) -> torch.Tensor:
    """Additive 4D mask (rows, 1, width, prefix + width): every token sees the prefix and its own row's earlier tokens.

    A padding position sees itself only, so no softmax row is empty.
    """
    width = segments.shape[1]
    device = segments.device
    causal = torch.ones((width, width), dtype=torch.bool, device=device).tril()
    own = (segments[:, :, None] == segments[:, None, :]) & (segments[:, None, :] > 0) & causal
    own |= torch.eye(width, dtype=torch.bool, device=device)
    prefix = torch.ones((segments.shape[0], width, prefix_len), dtype=torch.bool, device=device)
    allowed = torch.cat([prefix, own], dim=2)
    return torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill_(~allowed, torch.finfo(dtype).min)[:, None]


def _packed_forward(model, inputs: dict, labels: torch.Tensor):
    """A packed batch's forward pass: (outputs, target columns), with logits only where a row predicts an answer token.

    The LM head runs at the columns where any packed row predicts an answer
    token; logits column k predicts labels[:, target_columns[k]] (-100 where
    that row has no answer token there).
    """
    segments = inputs.pop("segments")
    prefix_ids = inputs.pop("prefix_ids", None)
    rows = segments.shape[0]
    predicts = torch.zeros_like(labels, dtype=torch.bool)
    predicts[:, :-1] = labels[:, 1:] != -100  # logits at position t predict token t + 1
    columns = predicts.any(dim=0).nonzero().squeeze(1)
    cache = _prefix_cache(model, prefix_ids, rows) if prefix_ids is not None else None
    prefix_len = prefix_ids.shape[1] if prefix_ids is not None else 0
    outputs = model(
        input_ids=inputs["input_ids"], position_ids=inputs["position_ids"],
        attention_mask=_packed_attention_mask(segments, prefix_len, model.dtype),
        past_key_values=cache, use_cache=cache is not None, logits_to_keep=columns,
    )
    return outputs, columns + 1


def _shared_prompt_length(examples: list[dict]) -> int:
    """How many leading tokens all rows share, stopping before the position that predicts any answer token."""
    first_target = min(next((i for i, t in enumerate(e["labels"]) if t != -100), len(e["labels"])) for e in examples)
    tokens = [e["input_ids"] for e in examples]
    # The position that predicts the first answer token must stay in each row, so its logits are computed.
    return min(common_prefix_length(tokens), max(first_target - 1, 0))


def _forward_after_shared_prefix(model, prefix_ids: torch.Tensor, inputs: dict, logits_to_keep: int):
    """The batch's forward pass with its shared prefix encoded once: the same logits, with gradients, as the whole rows.

    The prefix's keys and values (which depend on the trainable weights) are
    repeated for every row; backward sums the rows' gradients into them.
    """
    batch = inputs["input_ids"].shape[0]
    cache = _prefix_cache(model, prefix_ids, batch)
    prefix_mask = torch.ones((batch, prefix_ids.shape[1]), dtype=inputs["attention_mask"].dtype, device=prefix_ids.device)
    return model(
        input_ids=inputs["input_ids"], position_ids=inputs["position_ids"],
        attention_mask=torch.cat([prefix_mask, inputs["attention_mask"]], dim=1),
        past_key_values=cache, use_cache=True, logits_to_keep=logits_to_keep,
    )


def _prefix_cache(model, prefix_ids: torch.Tensor, rows: int):
    """The shared prefix's keys and values, computed once (with gradients) and repeated for `rows` rows."""
    cache = model(input_ids=prefix_ids, use_cache=True, logits_to_keep=1).past_key_values
    cache.batch_repeat_interleave(rows)
    return cache


def _epoch_seeded_sampler(batch_size: int, lengths: list[int], seed: int):
    """Length-grouped batches, in shuffled order, drawn from (seed, epoch) alone.

    transformers' LengthGroupedSampler sorts each mega-batch (50 batches) by
    length and yields its batches longest to shortest, so training walks from
    long texts to short ones every 50 steps and the last, low-learning-rate
    steps see only the shortest texts. Here the batches keep their similar
    lengths (little padding) but come in random order; the longest stays first,
    so running out of memory happens at once if at all.

    It also draws each epoch's order from the running RNG, which a resumed run
    restores as it was at the checkpoint, not at the epoch's start: the
    interrupted epoch would then be replayed in another order. Seeding by
    epoch replays it exactly.
    """
    from transformers.trainer_pt_utils import LengthGroupedSampler

    class EpochSeededLengthGroupedSampler(LengthGroupedSampler):
        def __init__(self):
            super().__init__(batch_size, lengths=lengths)
            self.epoch = 0

        def set_epoch(self, epoch: int) -> None:
            self.epoch = epoch

        def __iter__(self):
            self.generator = torch.Generator().manual_seed(seed + self.epoch)
            indices = list(super().__iter__())
            batches = [indices[i : i + batch_size] for i in range(0, len(indices), batch_size)]
            order = [0, *(1 + torch.randperm(len(batches) - 1, generator=self.generator)).tolist()] if batches else []
            return iter([i for b in order for i in batches[b]])

    return EpochSeededLengthGroupedSampler()


def shuffled_length_groups(trainer, train_dataset=None):
    """A Trainer's _get_train_sampler, with transformers' length-grouped sampler swapped for _epoch_seeded_sampler."""
    from transformers import Trainer
    from transformers.trainer_pt_utils import LengthGroupedSampler

    sampler = Trainer._get_train_sampler(trainer, train_dataset)
    if isinstance(sampler, LengthGroupedSampler):
        return _epoch_seeded_sampler(sampler.batch_size, sampler.lengths, trainer.args.data_seed or trainer.args.seed)
    return sampler


def _answer_only_trainer_class():
    from trl import SFTTrainer

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
                outputs, target_columns = _packed_forward(model, inputs, labels)
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
                    outputs = _forward_after_shared_prefix(model, prefix_ids, inputs, keep)
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

    return AnswerOnlySFTTrainer


def adapter_config(cfg: Config, task_type: str):
    """The peft config for finetuning_type (None for full fine-tuning); task_type CAUSAL_LM or SEQ_CLS."""
    from peft import IA3Config, LoraConfig

    named = [m.strip() for m in cfg.lora_target.split(",") if m.strip()]
    # A classification head is new: peft trains it in full (modules_to_save), so no adapter goes inside it.
    head = r".*\b(classifier|pre_classifier|score)(\..*)?$" if task_type == "SEQ_CLS" else None
    if cfg.finetuning_type in ("lora", "qlora"):
        return LoraConfig(
            r=cfg.lora_rank, lora_alpha=cfg.resolved_lora_alpha, lora_dropout=cfg.lora_dropout,
            target_modules="all-linear" if cfg.lora_target == "all" else named, task_type=task_type,
            exclude_modules=head,
        )
    if cfg.finetuning_type == "ia3":
        # IA3 scales keys, values and the MLP output; "all" lets peft pick them for the architecture.
        return IA3Config(task_type=task_type, target_modules=None if cfg.lora_target == "all" else named,
                         feedforward_modules=None if cfg.lora_target == "all" else [], exclude_modules=head)
    return None


def trainer_arguments(cfg: Config, bf16: bool, packed: bool = False) -> dict:
    """The transformers TrainingArguments both stages take from the config (`packed`: sft packs its rows)."""
    if cfg.report_to == "wandb" and not os.environ.get("WANDB_API_KEY"):
        os.environ.setdefault("WANDB_MODE", "offline")  # no account needed; `wandb sync` uploads later
    return dict(
        output_dir=cfg.output_dir,
        per_device_train_batch_size=cfg.per_device_train_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        learning_rate=cfg.learning_rate,
        num_train_epochs=cfg.num_train_epochs,
        max_steps=cfg.max_steps,
        lr_scheduler_type=cfg.lr_scheduler_type,
        warmup_steps=cfg.warmup_steps,
        weight_decay=cfg.weight_decay,
        gradient_checkpointing=cfg.gradient_checkpointing,
        bf16=bf16,
        use_cpu=not torch.cuda.is_available(),
        seed=cfg.seed,
        data_seed=cfg.seed,
        logging_steps=cfg.logging_steps,
        disable_tqdm=False,  # the progress bar with ETA, even with library logs quiet
        save_strategy="steps" if cfg.save_steps else "no",
        save_steps=cfg.save_steps or 500,
        save_total_limit=cfg.save_total_limit,
        report_to=[] if cfg.report_to == "none" else [cfg.report_to],
        deepspeed=cfg.deepspeed,
        # Length-grouped batches waste little compute on padding (in shuffled order: shuffled_length_groups), but
        # each holds texts of one length; packed rows skip padding in random batches, which learned better.
        train_sampling_strategy="group_by_length" if _grouped(cfg, packed) else "random",
    )


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
        log.info("packing needs the shared prefix (one process, no FlashAttention-2 or gradient checkpointing, "
                 "shared_prefix: true): training on padded%s rows", " length-grouped" if _grouped(cfg, False) else "")
    return LeftPadCollator(tokenizer.pad_token_id, share_prefix=share, pack=cfg.packing)


def _build_trainer(cfg: Config, model, tokenizer, examples: list[dict], bf16: bool):
    from datasets import Dataset
    from trl import SFTConfig

    AnswerOnlySFTTrainer = _answer_only_trainer_class()

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
            model=model, args=args, train_dataset=Dataset.from_list(examples), processing_class=tokenizer,
            peft_config=peft_config, data_collator=collator,
        )
    except ValueError as exc:
        if "target modules" in str(exc) or "target_modules" in str(exc):
            raise UserError(f"lora_target {cfg.lora_target!r} does not fit this model ({str(exc).splitlines()[0]}); "
                            "name its modules, e.g. lora_target: q_proj,v_proj") from None
        raise
