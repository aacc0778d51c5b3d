"""`instructemo sft`: supervised fine-tuning with trl's SFTTrainer and peft.

Reads top to bottom: check the data, build the prompts, load the model, train
(train/trainer.py sets the Trainer up, models/batching.py shapes its batches), keep the best
checkpoint when asked, and save what a person and `generate-eval` need.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

from instructemo.config.schema import Config
from instructemo.data.balance import balanced_examples
from instructemo.data.datasets import Split
from instructemo.models.load import load_causal_lm, load_tokenizer, resolve_model_path, training_device, use_bf16
from instructemo.prompts.builder import PromptBuilder
from instructemo.train.checkpoints import attach_selector, generative_predictor
from instructemo.train.head import run_cls
from instructemo.train.preflight import check_before_training, start_run
from instructemo.train.trainer import build_sft_trainer, train_and_save

log = logging.getLogger(__name__)


def run_sft(cfg: Config, train: Split | None = None, on_selection: Callable[[list[dict]], bool] | None = None) -> Path:
    """Train an adapter (or a full model) into cfg.output_dir and return that directory.

    `train` replaces cfg.dataset's rows (cross-validation passes its folds this way).
    `on_selection(history)` is called after each select_best evaluation; True stops training there.
    With `stage: head` the same verb trains a classification head instead (head.py).
    """
    if cfg.stage == "head":
        return run_cls(cfg, train, on_selection)
    plan = check_before_training(cfg, train)
    train = plan.train
    device = training_device(cfg.device)
    bf16 = use_bf16(cfg.bf16, device)
    model_path = resolve_model_path(cfg.model_name_or_path)
    tokenizer = load_tokenizer(model_path, trust_remote_code=cfg.trust_remote_code)
    log.info("training on %d rows of %s (%s)", len(train.records), cfg.dataset, train.origin)

    builder = PromptBuilder(tokenizer, plan.template, train.label_space, cfg.cutoff_len)
    examples = [builder.training_example(r) for r in train.records]
    if builder.truncated:
        log.warning("%d of %d texts were cut to fit cutoff_len=%d", builder.truncated, len(examples), cfg.cutoff_len)
    examples = balanced_examples(cfg.label_balancing, [r.labels for r in train.records], examples)

    # Full fine-tuning updates every weight, and a bf16 weight loses any update below 1/256 of itself: the weights
    # stay fp32 (the master copy) while bf16 autocast does the compute. DeepSpeed keeps its own fp32 copy.
    master_fp32 = cfg.finetuning_type == "full" and not cfg.deepspeed
    model = load_causal_lm(
        model_path,
        flash_attn=cfg.flash_attn,
        bf16=bf16 and not master_fp32,
        four_bit=cfg.finetuning_type == "qlora",
        trust_remote_code=cfg.trust_remote_code,
        allow_pickle=cfg.allow_pickle_weights,
        training=True,
        device=device,
    )
    if cfg.finetuning_type == "qlora":
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing)
    trainer = build_sft_trainer(cfg, model, tokenizer, examples, bf16)
    longest = max(len(row) for row in trainer.train_dataset["input_ids"])
    if longest > cfg.cutoff_len:
        log.info(
            "the longest row is %d tokens, %d over cutoff_len: kept whole, answer included",
            longest,
            longest - cfg.cutoff_len,
        )
    run, checkpoint, progress = start_run(
        cfg, plan.fingerprint
    )  # only now: a failure to load leaves output_dir as it was
    selector = None
    if plan.select is not None:
        prompts = [builder.prompt(r.text) for r in plan.select.records]
        predict = generative_predictor(cfg, tokenizer, prompts, train.label_space)
        selector = attach_selector(trainer, cfg, predict, plan.select, checkpoint, on_selection)
    return train_and_save(
        cfg, run, trainer, tokenizer, plan, model_path, len(trainer.train_dataset), checkpoint, progress, selector
    )
