"""`instructemo sft`: supervised fine-tuning with trl's SFTTrainer and peft.

Reads top to bottom: validate data, load the model, train, save what a person
and `generate-eval` need.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import time
from pathlib import Path

import torch
import yaml

from .balance import oversample_counts, rarest_label_weights
from .config import Config
from .checkpoints import SELECTION_FILE, BestCheckpoint
from .data import Split, default_dev_spec, default_eval_spec, load_split
from .errors import UserError
from .infer.hf import common_prefix_length
from .labels import LABEL_SPACE_FILE
from .launch import inside_launcher
from .models import load_causal_lm, load_tokenizer, resolve_model_path, use_bf16
from .prompts import PromptBuilder, load_template
from .report import plot_loss, write_atomic, write_skipped_rows

log = logging.getLogger(__name__)

RESOLVED_CONFIG_FILE = "instructemo_config.yaml"


def run_sft(cfg: Config, train: Split | None = None) -> Path:
    """Train an adapter (or a full model) into cfg.output_dir and return that directory.

    `train` replaces cfg.dataset's rows (cross-validation passes its folds this way).
    With `stage: cls` the same verb trains a classification head instead (dense.py).
    """
    if cfg.stage == "cls":
        from .dense import run_cls

        return run_cls(cfg, train)
    train, template, select = check_before_training(cfg, train)
    output_dir = Path(cfg.output_dir)
    checkpoint = prepare_output_dir(cfg)
    bf16 = use_bf16(cfg.bf16)
    model_path = resolve_model_path(cfg.model_name_or_path)
    tokenizer = load_tokenizer(model_path, trust_remote_code=cfg.trust_remote_code)
    log.info("training on %d rows of %s (%s)", len(train.records), cfg.dataset, train.origin)

    builder = PromptBuilder(tokenizer, template, train.label_space, cfg.cutoff_len)
    examples = [builder.training_example(r) for r in train.records]
    if builder.truncated:
        log.warning("%d of %d texts were cut to fit cutoff_len=%d", builder.truncated, len(examples), cfg.cutoff_len)
    examples = _balanced(cfg.label_balancing, [r.labels for r in train.records], examples)

    model = load_causal_lm(model_path, flash_attn=cfg.flash_attn, bf16=bf16, four_bit=cfg.finetuning_type == "qlora",
                           trust_remote_code=cfg.trust_remote_code, allow_pickle=cfg.allow_pickle_weights, training=True)
    if cfg.finetuning_type == "qlora":
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing)
    trainer = _build_trainer(cfg, model, tokenizer, examples, bf16)
    selector = None
    if select is not None:
        selector = BestCheckpoint(
            tokenizer, [builder.prompt(r.text) for r in select.records], [r.labels for r in select.records],
            train.label_space, metric=cfg.select_metric, every_steps=cfg.select_steps,
            batch_size=cfg.per_device_eval_batch_size, max_new_tokens=cfg.max_new_tokens,
        )
        trainer.add_callback(selector)
    if trainer.is_world_process_zero():
        write_resolved_config(cfg, model_path, train)
    if checkpoint is not None:
        log.info("resuming from %s", checkpoint)
    started = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    train_seconds = time.perf_counter() - started
    selection = selector.restore_best(trainer.model, result.global_step) if selector is not None else None

    save_run(cfg, trainer, tokenizer, train, rows=len(examples), train_seconds=train_seconds, result=result)
    if selection is not None and trainer.is_world_process_zero():
        write_atomic(output_dir / SELECTION_FILE, json.dumps(selection, indent=2))
    return output_dir


def write_resolved_config(cfg: Config, model_path: str, train: Split) -> None:
    """Written first, so even a run killed in its first step is recognisable as one."""
    output_dir = Path(cfg.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    resolved = {**cfg.to_dict(), "model_path": model_path, "template_resolved": cfg.template if cfg.template != "auto" else train.template}
    write_atomic(output_dir / RESOLVED_CONFIG_FILE, yaml.safe_dump(resolved, sort_keys=False))


def save_run(cfg: Config, trainer, tokenizer, train: Split, *, rows: int, train_seconds: float, result) -> None:
    """The model and what a person, generate-eval and compare need from a finished run (both stages)."""
    output_dir = Path(cfg.output_dir)
    trainer.save_model(str(output_dir))  # every process takes part (DeepSpeed ZeRO-3 gathers the weights)
    if not trainer.is_world_process_zero():
        return  # in multi-process runs the first process writes the rest
    tokenizer.save_pretrained(str(output_dir))
    write_skipped_rows(output_dir, train.skipped)
    write_atomic(output_dir / LABEL_SPACE_FILE, json.dumps(train.label_space.to_dict(), indent=2))
    history = trainer.state.log_history
    write_atomic(output_dir / "trainer_log.jsonl", "".join(json.dumps(h) + "\n" for h in history))
    plot_loss(history, output_dir / "loss.png")
    parameters = list(trainer.model.parameters())
    summary = {
        "stage": cfg.stage,
        "train_rows": rows,
        "train_seconds": round(train_seconds, 1),
        "train_examples_per_second": round(rows * cfg.num_train_epochs / train_seconds, 2) if cfg.max_steps == -1 else None,
        "global_steps": result.global_step,
        "processes": trainer.args.world_size,
        "final_loss": result.training_loss,
        "trainable_parameters": sum(p.numel() for p in parameters if p.requires_grad),
        "total_parameters": sum(p.numel() for p in parameters),
    }
    write_atomic(output_dir / "train_results.json", json.dumps(summary, indent=2))
    log.info("saved %s %s to %s (%.0fs, mean loss %.4f)", cfg.stage, cfg.finetuning_type, output_dir, train_seconds, result.training_loss)


def check_before_training(cfg: Config, train: Split | None = None) -> tuple[Split, object, Split | None]:
    """Everything a user can get wrong, checked before a model loads: (train rows, template, selection rows)."""
    if train is None:
        train = load_split(
            cfg.dataset, cfg.dataset_dir, max_samples=cfg.max_samples,
            text_column=cfg.text_column, label_column=cfg.label_column, on_bad_rows=cfg.on_bad_rows,
        )
    template = load_template(cfg.template, train.template)
    if cfg.do_eval:
        eval_spec = cfg.eval_dataset or default_eval_spec(cfg.dataset, cfg.dataset_dir, cfg.text_column, cfg.label_column)
        load_split(eval_spec, cfg.dataset_dir, label_space=train.label_space, max_samples=cfg.max_eval_samples,
                   text_column=cfg.text_column, label_column=cfg.label_column, on_bad_rows=cfg.on_bad_rows)
    select = _selection_split(cfg, train) if cfg.select_best else None
    output_dir = Path(cfg.output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise UserError(f"output_dir {output_dir} is a file; choose a directory path")
    if cfg.report_to != "none" and importlib.util.find_spec(cfg.report_to) is None:
        raise UserError(f"report_to: {cfg.report_to} needs its package: pip install {cfg.report_to}")
    check_engines(cfg)
    if not inside_launcher():
        previous_run_problem(cfg, resume_checkpoint(cfg))
    return train, template, select


def last_complete_checkpoint(output_dir: Path) -> Path | None:
    """The newest checkpoint-N whose trainer_state.json (written last) is whole; a killed save is skipped."""
    steps = []
    for path in output_dir.glob("checkpoint-*"):
        try:
            json.loads((path / "trainer_state.json").read_text())
            steps.append((int(path.name.split("-")[1]), path))
        except (OSError, ValueError, IndexError):
            continue
    return max(steps)[1] if steps else None


def resume_checkpoint(cfg: Config) -> Path | None:
    if cfg.resume == "none":
        return None
    if cfg.resume == "auto":
        return last_complete_checkpoint(Path(cfg.output_dir))
    path = Path(cfg.resume)
    if not (path / "trainer_state.json").is_file():
        raise UserError(f"resume: {path} is not a complete checkpoint (no trainer_state.json); use resume: auto or a checkpoint-N directory")
    return path


def previous_run_problem(cfg: Config, checkpoint: Path | None) -> None:
    """Refuse to mix a new run into a previous one unless asked to replace it."""
    output_dir = Path(cfg.output_dir)
    if checkpoint is not None or not (output_dir / RESOLVED_CONFIG_FILE).is_file() or cfg.overwrite_output_dir:
        return
    raise UserError(f"output_dir {output_dir} already holds a run; set overwrite_output_dir: true to replace it, "
                    "resume: auto to continue it, or choose another output_dir")


def prepare_output_dir(cfg: Config) -> Path | None:
    """The checkpoint to resume from, if any; a previous run that overwrite_output_dir replaces is removed first
    (by the launching process only, never by each worker)."""
    checkpoint = resume_checkpoint(cfg)
    if not inside_launcher():
        clear_previous_run(cfg, checkpoint)
    return checkpoint


def clear_previous_run(cfg: Config, checkpoint: Path | None) -> None:
    """With overwrite_output_dir, delete the previous run (only a directory instructemo wrote) before training."""
    output_dir = Path(cfg.output_dir)
    if checkpoint is None and cfg.overwrite_output_dir and (output_dir / RESOLVED_CONFIG_FILE).is_file():
        log.info("overwrite_output_dir: removing the previous run in %s", output_dir)
        shutil.rmtree(output_dir)


def check_engines(cfg: Config) -> None:
    """QLoRA and DeepSpeed need hardware or packages this machine may lack: say so before loading anything."""
    if cfg.finetuning_type == "qlora":
        if not torch.cuda.is_available():
            raise UserError("finetuning_type: qlora needs a CUDA GPU (bitsandbytes 4-bit NF4) and this machine has none; use finetuning_type: lora")
        if importlib.util.find_spec("bitsandbytes") is None:
            raise UserError("finetuning_type: qlora needs bitsandbytes: pip install bitsandbytes")
    if cfg.deepspeed:
        path = Path(cfg.deepspeed)
        if not path.is_file():
            raise UserError(f"deepspeed config {path} not found; see examples/deepspeed/")
        try:
            json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise UserError(f"deepspeed config {path} is not valid JSON (line {exc.lineno}: {exc.msg})") from None
        if importlib.util.find_spec("deepspeed") is None:
            raise UserError("deepspeed: needs the deepspeed package: pip install deepspeed")


def _selection_split(cfg: Config, train):
    """The dev rows that pick the checkpoint, checked before any model loads."""
    if cfg.select_metric in ("jaccard", "exact_match") and not train.label_space.multi_label:
        raise UserError(f"select_metric {cfg.select_metric} is for multi-label data; use macro_f1, micro_f1 or accuracy")
    spec = cfg.select_dataset or default_dev_spec(cfg.dataset, cfg.dataset_dir, cfg.text_column, cfg.label_column)
    return load_split(spec, cfg.dataset_dir, default_split="dev", label_space=train.label_space,
                      max_samples=cfg.max_select_samples, text_column=cfg.text_column, label_column=cfg.label_column, on_bad_rows=cfg.on_bad_rows)


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

    class AnswerOnlySFTTrainer(SFTTrainer):
        """SFTTrainer whose loss projects only the answer positions through the LM head.

        A classification answer is a few tokens after a prompt of dozens, and
        the LM head (vocabulary x hidden) is a large share of a small model's
        compute. Asking the model for `logits_to_keep` = the answer span keeps
        the forward call whole (DDP and DeepSpeed see it) while skipping the
        head and softmax on every prompt position.
        """

        _get_train_sampler = shuffled_length_groups

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
        max_length=cfg.cutoff_len,
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
