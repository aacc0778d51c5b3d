"""`stage: head`: a classification head (AutoModelForSequenceClassification) on the same data and label spaces.

The text goes in as it is (no prompt): an encoder (BERT, DistilBERT, RoBERTa,
MiniLM) reads it whole, a decoder (Llama, Qwen, Gemma) is read at its last
token by a new score head. Single-label trains with cross-entropy, multi-label
with one binary cross-entropy per label; after training, per-label thresholds
are chosen on the dev split (as `instructemo calibrate` does) when there is one.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import torch
from sklearn.utils.class_weight import compute_class_weight

from instructemo.config.schema import Config
from instructemo.data.datasets import Split, run_spec
from instructemo.data.labels import LabelSpace
from instructemo.errors import UserError, shown
from instructemo.evaluate.calibrate import run_calibrate
from instructemo.models.load import (
    load_sequence_classifier,
    load_tokenizer,
    resolve_model_path,
    training_device,
    use_bf16,
)
from instructemo.train.checkpoints import attach_selector, head_predictor
from instructemo.train.preflight import check_before_training, start_run
from instructemo.train.trainer import ClassifierTrainer, adapter_config, train_and_save, trainer_arguments

log = logging.getLogger(__name__)


def class_weights(setting: str | dict, space: LabelSpace, label_sets: list[tuple[str, ...]]) -> torch.Tensor | None:
    """Per-class loss weights: cross-entropy class weights (single-label) or BCE positive weights (multi-label).

    balanced, single-label: scikit-learn's compute_class_weight, n / (classes present * count).
    balanced, multi-label: negatives / positives for each label.
    A class absent from the training rows weighs 1, and so does a label in every row: its positives would
    otherwise weigh 0 and it would never be learned.
    """
    if setting == "none":
        return None
    names = space.names
    if isinstance(setting, dict):
        unknown = sorted(set(setting) - set(names))
        if unknown:
            raise UserError(
                f"class_weights names labels outside the label space: {unknown}; the labels are {list(names)}"
            )
        return torch.tensor([float(setting.get(n, 1.0)) for n in names])
    counts = np.array([sum(n in labels for labels in label_sets) for n in names], dtype=np.float64)
    present = counts > 0
    weights = np.ones(len(names))
    if space.multi_label:
        balanced = present & (counts < len(label_sets))
        weights[balanced] = (len(label_sets) - counts[balanced]) / counts[balanced]
    elif present.any():
        classes = np.array(names)[present]
        weights[present] = compute_class_weight("balanced", classes=classes, y=np.array([s[0] for s in label_sets]))
    return torch.tensor(weights, dtype=torch.float32)


def targets(space: LabelSpace, label_sets: list[tuple[str, ...]]) -> list:
    """Class indices (single-label) or 0/1 float rows (multi-label), as the losses take them."""
    index = {n: i for i, n in enumerate(space.names)}
    if not space.multi_label:
        return [index[labels[0]] for labels in label_sets]
    return [[float(n in labels) for n in space.names] for labels in label_sets]


def classification_loss(weights: torch.Tensor | None, multi_label: bool):
    """The loss Trainer calls with the model's outputs and the batch's labels.

    Trainer does not divide a `compute_loss_func` loss by the gradient
    accumulation steps: it passes `num_items_in_batch`, the labels in the whole
    accumulated batch (over every process), and takes the loss as scaled by it.
    So each micro-batch returns its summed loss over that count, and k
    micro-batches of b rows give the loss and gradients of one batch of k*b
    rows. Items are rows (single-label) or (row, label) pairs (multi-label);
    class weights scale each item's term, as in a weighted sum.
    """

    def loss(outputs, labels, num_items_in_batch=None):
        logits = outputs.logits.float()
        w = weights.to(logits.device) if weights is not None else None
        if multi_label:
            total = torch.nn.functional.binary_cross_entropy_with_logits(
                logits, labels.float(), pos_weight=w, reduction="sum"
            )
        else:
            total = torch.nn.functional.cross_entropy(logits, labels, weight=w, reduction="sum")
        count = num_items_in_batch if num_items_in_batch is not None else labels.numel()
        return total / count

    return loss


def run_cls(cfg: Config, train: Split | None = None, on_selection=None) -> Path:
    """Train a classification head (with LoRA, IA3 or full fine-tuning) into cfg.output_dir.

    With select_best, the head's dev scores pick the weights kept (checkpoints.py); `on_selection` as in run_sft.
    """
    from datasets import Dataset
    from transformers import DataCollatorWithPadding, TrainingArguments, set_seed

    if cfg.finetuning_type == "qlora":
        raise UserError("stage: head takes finetuning_type lora, ia3 or full; qlora is for stage: sft")
    plan = check_before_training(cfg, train)
    train = plan.train
    space = train.label_space
    device = training_device(cfg.device)
    bf16 = use_bf16(cfg.bf16, device)
    model_path = resolve_model_path(cfg.model_name_or_path)
    tokenizer = load_tokenizer(model_path, trust_remote_code=cfg.trust_remote_code, chat=False)
    log.info(
        "training a %s head on %d rows of %s (%s)",
        "multi-label" if space.multi_label else "single-label",
        len(train.records),
        cfg.dataset,
        train.origin,
    )

    label_sets = [r.labels for r in train.records]
    encoded = tokenizer([r.text for r in train.records], truncation=True, max_length=cfg.cutoff_len)
    dataset = Dataset.from_dict(
        {
            "input_ids": encoded["input_ids"],
            "attention_mask": encoded["attention_mask"],
            "labels": targets(space, label_sets),
        }
    )
    weights = class_weights(cfg.class_weights, space, label_sets)
    if weights is not None:
        log.info("class weights: %s", shown(f"{n} {w:.2f}" for n, w in zip(space.names, weights.tolist())))

    set_seed(cfg.seed)  # before the new head and the adapter are initialised: the Trainer seeds only once it is built
    model = load_sequence_classifier(
        model_path,
        list(space.names),
        multi_label=space.multi_label,
        flash_attn=cfg.flash_attn,
        trust_remote_code=cfg.trust_remote_code,
        allow_pickle=cfg.allow_pickle_weights,
        device=device,
    )
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id  # decoders find each row's last real token by it
    peft_config = adapter_config(cfg, "SEQ_CLS")
    if peft_config is not None:
        from peft import get_peft_model

        model = get_peft_model(model, peft_config)  # SEQ_CLS also trains (and saves) the new head in full
    args = TrainingArguments(**trainer_arguments(cfg, bf16))
    trainer = ClassifierTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        data_collator=DataCollatorWithPadding(tokenizer),
        compute_loss_func=classification_loss(weights, space.multi_label),
    )
    run, checkpoint, progress = start_run(
        cfg, plan.fingerprint
    )  # only now: a failure to load leaves output_dir as it was
    selector = None
    if plan.select is not None:
        predict = head_predictor(cfg, tokenizer, [r.text for r in plan.select.records], space)
        selector = attach_selector(trainer, cfg, predict, plan.select, checkpoint, on_selection)
    finish = (lambda staging: _calibrate_if_dev(cfg, staging)) if space.multi_label else None
    return train_and_save(
        cfg, run, trainer, tokenizer, plan, model_path, len(train.records), checkpoint, progress, selector, finish
    )


def _calibrate_if_dev(cfg: Config, staged_run: Path) -> None:
    """Per-label thresholds from the dev split, when the dataset has one (else every label uses 0.5),
    stored with the staged run so it is complete with them."""
    if cfg.select_dataset is None:
        try:
            run_spec(cfg, "dev")
        except UserError:
            log.warning(
                "no dev split to choose per-label thresholds on: every label uses 0.5 "
                "(set select_dataset and run instructemo calibrate to choose them)"
            )
            return
    run_calibrate(dataclasses.replace(cfg, adapter_name_or_path=str(staged_run)))
