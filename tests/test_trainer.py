"""The Trainer's arguments come from the config: the trainer keys by name, derived fields, then training_args."""

import dataclasses

import pytest
import torch

from instructemo.config.schema import DERIVED_TRAINING_ARGS, TRAINER_KEYS, make_config
from instructemo.errors import UserError
from instructemo.train.preflight import check_training_args
from instructemo.train.trainer import trainer_arguments


def _hand_copied(cfg, bf16, packed):
    """trainer_arguments as it was written before the trainer keys were marked in config.py."""
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
        disable_tqdm=False,
        save_strategy="steps" if cfg.save_steps else "no",
        save_steps=cfg.save_steps or 500,
        save_total_limit=cfg.save_total_limit,
        report_to=[] if cfg.report_to == "none" else [cfg.report_to],
        deepspeed=cfg.deepspeed,
        train_sampling_strategy="group_by_length"
        if (not packed if cfg.group_by_length == "auto" else cfg.group_by_length)
        else "random",
    )


@pytest.mark.parametrize(
    "values",
    [{}, {"learning_rate": 3e-4, "save_steps": None, "report_to": "tensorboard", "group_by_length": True, "seed": 7}],
)
@pytest.mark.parametrize("packed", [False, True])
def test_arguments_are_the_ones_copied_by_hand_before(values, packed):
    cfg = make_config(values)
    assert trainer_arguments(cfg, bf16=False, packed=packed) == _hand_copied(cfg, False, packed)


def test_trainer_keys_and_derived_fields_exist_in_sft_config():
    from trl import SFTConfig

    fields = {f.name for f in dataclasses.fields(SFTConfig)}
    assert set(TRAINER_KEYS) <= fields and set(DERIVED_TRAINING_ARGS) <= fields


def test_training_args_reach_the_trainer_arguments(tmp_path):
    from trl import SFTConfig

    cfg = make_config({"output_dir": str(tmp_path), "training_args": {"max_grad_norm": 0.25, "adam_beta2": 0.95}})
    check_training_args(cfg)
    args = SFTConfig(**trainer_arguments(cfg, bf16=False))
    assert (args.max_grad_norm, args.adam_beta2) == (0.25, 0.95)


@pytest.mark.parametrize(
    "training_args, message",
    [
        ({"learning_rate": 1e-3}, "a key of this config: set learning_rate at the top level"),
        ({"max_length": 64}, "derives from cutoff_len: set cutoff_len instead"),
        ({"fp16": True}, "derives from bf16: set bf16 instead"),
    ],
)
def test_training_args_may_not_shadow_the_config(training_args, message):
    with pytest.raises(UserError, match=message):
        make_config({"training_args": training_args})


@pytest.mark.parametrize("stage, known", [("sft", "SFTConfig"), ("head", "TrainingArguments")])
def test_unknown_training_args_are_named_with_a_suggestion(stage, known):
    cfg = make_config({"stage": stage, "training_args": {"max_grad_nrom": 1.0}})
    with pytest.raises(UserError, match=f"'max_grad_nrom', which {known} does not have; did you mean 'max_grad_norm'"):
        check_training_args(cfg)


@pytest.mark.parametrize(
    "training_args, message",
    [
        ({"max_grad_norm": "abc"}, "training_args max_grad_norm must be a number, got 'abc'"),
        ({"adam_epsilon": "1e-8"}, r"got '1e-8' \(YAML reads 1e-8 without a dot as text: write 1.0e-8\)"),
        ({"dataloader_num_workers": 2.5}, "dataloader_num_workers must be a whole number, got 2.5"),
        ({"save_only_model": 1}, "save_only_model must be true or false, got 1"),
        ({"label_names": "labels"}, "label_names must be a list or null"),
        ({"optim": "adamw_torchh"}, "optim must be one of adamw_torch, .*; did you mean 'adamw_torch'"),
    ],
)
@pytest.mark.parametrize("stage", ["sft", "head"])
def test_training_args_of_the_wrong_type_are_refused_before_the_model_loads(stage, training_args, message):
    cfg = make_config({"stage": stage, "training_args": training_args})
    with pytest.raises(UserError, match=message):
        check_training_args(cfg)
    fine = {"max_grad_norm": 1, "adam_epsilon": 1.0e-8, "optim": "adamw_torch", "label_names": ["labels"]}
    check_training_args(make_config({"stage": stage, "training_args": fine}))


@pytest.mark.parametrize("stage", ["sft", "head"])
def test_the_keys_passed_to_the_trainer_agree_with_trls_own_declarations(stage):
    """The config declares the Trainer's keys for their defaults and checks, without importing trl (5 s on every
    command); this keeps those declarations true to SFTConfig / TrainingArguments: same names, and defaults of a
    type the Trainer's own annotations take."""
    import dataclasses
    import typing

    from instructemo.config.schema import FIELDS, TRAINER_KEYS
    from instructemo.train.preflight import fits_annotation

    if stage == "sft":
        from trl import SFTConfig as arguments
    else:
        from transformers import TrainingArguments as arguments
    theirs = {f.name: f for f in dataclasses.fields(arguments)}
    hints = typing.get_type_hints(arguments)
    assert set(TRAINER_KEYS) <= set(theirs)
    for name in TRAINER_KEYS:
        assert fits_annotation(FIELDS[name].default, hints[name]), (name, FIELDS[name].default, hints[name])
