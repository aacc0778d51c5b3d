"""Every config key: its type, default and meaning, and the checks run before any heavy work.

One YAML file drives `instructemo sft` and `instructemo generate-eval`, so an
evaluation reuses the training settings. Key names follow LLaMA-Factory where
it has one, so its users feel at home.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from instructemo.config.checks import check_consistency, check_names, typo_hint
from instructemo.errors import UserError
from instructemo.run.directory import CONFIG_FILE
from instructemo.run.fileio import read_yaml_file

log = logging.getLogger(__name__)

GROUPS = ("model", "data", "finetuning", "inference", "tune")


def _key(
    default: Any,
    help: str,
    choices: tuple | None = None,
    minimum: float | None = None,
    maximum: float | None = None,
    trainer: bool = False,
    *,
    group: str,
    resume_neutral: bool = False,
    tunable: bool = True,
    webui: bool = False,
    derives: tuple[str, ...] = (),
):
    """A config key and everything instructemo knows about it, declared once; the key lists below derive from it.

    - `trainer`: transformers' TrainingArguments (trl's SFTConfig) has a field of this name and meaning, and
      receives the value as it is; the key is declared here for its default and its check.
    - `group`: the section it belongs to (GROUPS): how --help, the docs and the web UI order the keys.
    - `resume_neutral`: it does not change what training computes, so a resumed run may differ in it.
    - `tunable`: `instructemo tune` may search it (False: what a study is about, or what tune sets itself).
    - `webui`: the web UI's Train tab shows it.
    - `derives`: the Trainer's fields instructemo sets from this key; training_args may not set them.
    """
    assert group in GROUPS, group
    metadata = {
        "help": help,
        "choices": choices,
        "minimum": minimum,
        "maximum": maximum,
        "trainer": trainer,
        "group": group,
        "resume_neutral": resume_neutral,
        "tunable": tunable,
        "webui": webui,
        "derives": derives,
    }
    return field(default=default, metadata=metadata)


@dataclass
class Config:
    # --- model ---
    model_name_or_path: str = _key(
        "smollm2-135m-instruct",
        "Hub id, local HF directory, .gguf file, or alias (smollm2-135m-instruct, gemma3-270m).",
        group="model",
    )
    adapter_name_or_path: str | None = _key(
        None,
        "Adapter or fine-tuned model to evaluate; default: output_dir if it holds one.",
        group="model",
        resume_neutral=True,
        tunable=False,
    )
    flash_attn: str = _key(
        "auto",
        "Attention: auto (fa2 on CUDA when installed, else sdpa), fa2, sdpa or eager.",
        choices=("auto", "fa2", "sdpa", "eager"),
        group="model",
    )
    device: str = _key(
        "auto",
        "Where inference runs (generate-eval, predict, calibrate, classify, serve, webui): auto (a CUDA GPU when "
        "torch sees one, else the CPU; predict --shard i takes GPU i % count), cpu, cuda or cuda:N. Training uses "
        "the GPUs accelerate finds (CUDA_VISIBLE_DEVICES chooses), or the CPU with device: cpu.",
        group="model",
        resume_neutral=True,
        tunable=False,
    )
    bf16: bool | str = _key(
        "auto",
        "bfloat16 weights and autocast: auto (when the hardware has it), true or false.",
        choices=("auto",),
        group="model",
        derives=("bf16", "fp16"),
    )
    # --- data ---
    dataset: str = _key(
        "emotion",
        "Training data: a name in the registry (optionally name:split) or a CSV/TSV/JSONL path.",
        group="data",
        tunable=False,
    )
    eval_dataset: str | None = _key(
        None,
        "Evaluation data, same forms as dataset; default: the test (else dev) split of dataset.",
        group="data",
        resume_neutral=True,
        tunable=False,
    )
    dataset_dir: str = _key(
        "data",
        "Folder searched first for dataset files and an extra datasets.yaml registry.",
        group="data",
        tunable=False,
    )
    text_column: str | None = _key(
        None, "Text column of a CSV/TSV/JSONL path dataset; inferred when unset.", group="data", tunable=False
    )
    label_column: str | None = _key(
        None, "Label column of a CSV/TSV/JSONL path dataset; inferred when unset.", group="data", tunable=False
    )
    labels: list | None = _key(
        None,
        "The label names of a dataset given by path, in their canonical order: rows with other labels are bad "
        "rows, and integer labels 0, 1, ... index this list. Unset: the labels found in the file (sorted), which "
        "stops on labels that differ only in case or are too rare to be real.",
        group="data",
        tunable=False,
    )
    template: str = _key(
        "auto",
        "Prompt template: auto (the dataset's), single_label, multi_label, sentiment, or a .jinja path.",
        group="data",
    )
    on_bad_rows: str = _key(
        "error",
        "Rows with empty text, unknown labels, wrong columns, invalid UTF-8 or a repeated id: "
        "error (stop, with their lines) or skip (leave them out and report them).",
        choices=("error", "skip"),
        group="data",
    )
    max_samples: int | None = _key(
        None, "Use at most this many training rows (in file order).", minimum=1, group="data", webui=True
    )
    max_eval_samples: int | None = _key(
        None,
        "Use at most this many evaluation rows (in file order).",
        minimum=1,
        group="data",
        resume_neutral=True,
        tunable=False,
    )
    cutoff_len: int = _key(
        512,
        "Maximum tokens of prompt plus answer; longer training rows are truncated.",
        minimum=16,
        group="data",
        webui=True,
        derives=("max_length",),
    )
    # --- fine-tuning ---
    stage: str = _key(
        "sft",
        "What `instructemo sft` trains: sft (generative instruction tuning: the model writes the label) or "
        "head (a classification head on AutoModelForSequenceClassification, for encoders such as BERT or MiniLM "
        "and decoders with a score head).",
        choices=("sft", "head"),
        group="finetuning",
        webui=True,
    )
    class_weights: str | dict = _key(
        "none",
        "stage head: weigh the loss per class: none, balanced (inverse class frequency; for multi-label "
        "the negative/positive ratio per label) or a mapping {label: weight} (unnamed labels weigh 1).",
        choices=("none", "balanced"),
        group="finetuning",
    )
    finetuning_type: str = _key(
        "lora",
        "lora, qlora (LoRA on a 4-bit NF4 base; needs a CUDA GPU and bitsandbytes), ia3, or full.",
        choices=("lora", "qlora", "ia3", "full"),
        group="finetuning",
        webui=True,
    )
    lora_rank: int = _key(8, "LoRA rank r.", minimum=1, group="finetuning", webui=True)
    lora_alpha: float | None = _key(None, "LoRA alpha; default: 2 * lora_rank.", minimum=0, group="finetuning")
    lora_dropout: float = _key(0.0, "LoRA dropout probability.", minimum=0, group="finetuning")
    lora_target: str = _key(
        "all",
        "Modules that get LoRA: all (every linear layer but the LM head) or comma-separated names.",
        group="finetuning",
    )
    per_device_train_batch_size: int = _key(
        8, "Training batch size per device.", minimum=1, trainer=True, group="finetuning", webui=True
    )
    gradient_accumulation_steps: int = _key(
        1, "Batches accumulated per optimizer step.", minimum=1, trainer=True, group="finetuning"
    )
    learning_rate: float = _key(
        1e-4, "Peak learning rate (at most 1).", minimum=0, maximum=1, trainer=True, group="finetuning", webui=True
    )
    num_train_epochs: float = _key(
        1.0, "Training epochs.", minimum=0, maximum=10000, trainer=True, group="finetuning", webui=True
    )
    max_steps: int = _key(
        -1,
        "Stop after this many optimizer steps; -1 trains for num_train_epochs.",
        trainer=True,
        group="finetuning",
        webui=True,
    )
    lr_scheduler_type: str = _key(
        "cosine",
        "Learning-rate schedule.",
        choices=("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup"),
        trainer=True,
        group="finetuning",
    )
    warmup_steps: int = _key(0, "Linear warm-up steps.", minimum=0, trainer=True, group="finetuning")
    weight_decay: float = _key(0.0, "AdamW weight decay.", minimum=0, maximum=1, trainer=True, group="finetuning")
    gradient_checkpointing: bool = _key(
        False, "Trade compute for memory; slow for small models, so off.", trainer=True, group="finetuning"
    )
    group_by_length: bool | str = _key(
        "auto",
        "Batch rows of similar length together (less padding), in shuffled batch order: true; false: plain "
        "random batches; auto: random when sft packs its rows (see packing), length-grouped otherwise.",
        choices=("auto",),
        group="finetuning",
        derives=("train_sampling_strategy",),
    )
    packing: bool = _key(
        True,
        "Pack each batch's rows, after the shared prefix, side by side into as few rows as its longest row "
        "needs, each attending to itself only: the same loss and gradients without computing padding, so random "
        "batches train nearly as fast as length-grouped ones. Used where shared_prefix is; false pads instead.",
        group="finetuning",
        derives=("packing",),
    )
    shared_prefix: bool = _key(
        True,
        "Encode the prompt tokens every row of a batch shares (system prompt, instruction) once per batch "
        "instead of once per row: the same loss and gradients for less compute. Used with one process and "
        "without FlashAttention-2 or gradient checkpointing; false turns it off.",
        group="finetuning",
    )
    logging_steps: int = _key(
        10,
        "Log loss every this many optimizer steps.",
        minimum=1,
        trainer=True,
        group="finetuning",
        resume_neutral=True,
        webui=True,
    )
    label_balancing: str = _key(
        "none",
        "Imbalance: none, oversample (repeat rows carrying rare labels) or loss_weight "
        "(weight each row's loss by the inverse frequency of its rarest label).",
        choices=("none", "oversample", "loss_weight"),
        group="finetuning",
    )
    select_best: bool = _key(
        False,
        "Score the dev split greedily at each epoch's end (and every select_steps) and keep the "
        "weights with the best select_metric instead of the last ones.",
        group="finetuning",
        tunable=False,
    )
    select_steps: int | None = _key(
        None, "With select_best: also score every this many optimizer steps.", minimum=1, group="finetuning"
    )
    select_dataset: str | None = _key(
        None,
        "Split for checkpoint selection and threshold calibration; default: the dataset's dev split.",
        group="finetuning",
        tunable=False,
    )
    select_metric: str = _key(
        "macro_f1",
        "Metric that picks the checkpoint (higher is better).",
        choices=("macro_f1", "micro_f1", "accuracy", "jaccard", "exact_match"),
        group="finetuning",
        tunable=False,
    )
    max_select_samples: int | None = _key(
        300, "Dev rows scored at each selection point (the first ones).", minimum=1, group="finetuning", tunable=False
    )
    deepspeed: str | None = _key(
        None,
        "DeepSpeed JSON config (examples/deepspeed/ds_z2.json, ds_z3.json, *_offload.json); needs the deepspeed package.",
        trainer=True,
        group="finetuning",
        tunable=False,
    )
    nproc_per_node: int = _key(
        1,
        "Training processes on this machine; above 1, sft re-launches itself under torchrun "
        "(multi-node through NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT).",
        minimum=1,
        group="finetuning",
        tunable=False,
    )
    save_steps: int | None = _key(
        500,
        "Save a resumable checkpoint (weights, optimizer, scheduler, RNG, data position) every this many "
        "optimizer steps into output_dir/checkpoint-N; unset: none.",
        minimum=1,
        group="finetuning",
        resume_neutral=True,
        derives=("save_strategy", "save_steps"),
    )
    save_total_limit: int = _key(
        2, "Checkpoints kept; older ones are deleted.", minimum=1, trainer=True, group="finetuning", resume_neutral=True
    )
    resume: str = _key(
        "none",
        "none, auto (continue from the last complete checkpoint in output_dir), or a checkpoint directory.",
        group="finetuning",
        resume_neutral=True,
        tunable=False,
        webui=True,
    )
    training_args: dict | None = _key(
        None,
        "Any other field of transformers' TrainingArguments (trl's SFTConfig for stage sft), passed as it is, "
        "e.g. {max_grad_norm: 0.5, adam_beta2: 0.95, optim: adamw_torch_fused}; not the keys of this config, "
        "nor the fields instructemo derives from them (bf16, save_strategy, max_length, ...).",
        group="finetuning",
    )
    overwrite_output_dir: bool = _key(
        False,
        "Replace a previous run in output_dir instead of refusing to mix runs.",
        group="finetuning",
        resume_neutral=True,
        tunable=False,
        webui=True,
    )
    trust_remote_code: bool = _key(
        False,
        "Run Python code shipped with a model (only for sources you trust).",
        group="finetuning",
        resume_neutral=True,
    )
    allow_pickle_weights: bool = _key(
        False,
        "Load pickled .bin weights, which can run code when unpickled; default: safetensors only.",
        group="finetuning",
        resume_neutral=True,
    )
    output_dir: str = _key(
        "saves/run",
        "Where the adapter, tokenizer, config, logs and evaluations go.",
        trainer=True,
        group="finetuning",
        resume_neutral=True,
        tunable=False,
    )
    seed: int = _key(
        42,
        "Random seed for initialisation, shuffling and sampling.",
        trainer=True,
        group="finetuning",
        tunable=False,
        webui=True,
        derives=("data_seed",),
    )
    report_to: str = _key(
        "none",
        "Experiment tracker: none, tensorboard or wandb.",
        choices=("none", "tensorboard", "wandb"),
        group="finetuning",
        resume_neutral=True,
        derives=("report_to",),
    )
    do_eval: bool = _key(
        False, "After sft, run generate-eval on eval_dataset.", group="finetuning", resume_neutral=True, tunable=False
    )
    # --- inference: generate-eval and predict ---
    backend: str = _key(
        "hf",
        "Inference engine: hf (transformers) or vllm (offline LLM engine).",
        choices=("hf", "vllm"),
        group="inference",
        resume_neutral=True,
    )
    mode: str = _key(
        "generate",
        "generate (decode an answer, parse it) or score (likelihood of every label: always valid, with probabilities).",
        choices=("generate", "score"),
        group="inference",
        resume_neutral=True,
    )
    score_method: str = _key(
        "sequence",
        "Single-label score mode: sequence (the likelihood of each label's whole answer) or first_token (the "
        "probability of each label's first answer token: one forward pass, and what an export --format "
        "vllm-classify model computes in vLLM).",
        choices=("sequence", "first_token"),
        group="inference",
    )
    score_threshold: float | None = _key(
        None,
        "Multi-label score mode: predict labels whose probability reaches this, for a run without calibrated "
        "thresholds (thresholds.json, from instructemo calibrate, takes precedence); default 0.5.",
        minimum=0,
        group="inference",
        resume_neutral=True,
    )
    tensor_parallel_size: int = _key(
        1, "vLLM: GPUs to split the model across.", minimum=1, group="inference", resume_neutral=True
    )
    gpu_memory_utilization: float = _key(
        0.9, "vLLM: share of GPU memory the engine may take.", minimum=0, group="inference", resume_neutral=True
    )
    vllm_merge_lora: bool | str = _key(
        "auto",
        "vLLM: serve a LoRA adapter merged into the base (auto: on CPU, where vLLM's LoRA kernels are slow) "
        "or through a LoRARequest (false).",
        choices=("auto",),
        group="inference",
        resume_neutral=True,
    )
    few_shot: int = _key(
        0,
        "In-context examples per label, drawn from the training split and shown as earlier turns of the "
        "conversation before each text (an instruct model without training); 0: zero-shot.",
        minimum=0,
        group="inference",
    )
    few_shot_selection: str = _key(
        "random",
        "How the few_shot examples are chosen: random (the same ones for every text, drawn with seed) or "
        "similar (for each text, the most similar training texts of each label by few_shot_retriever's "
        "embeddings; a training text equal to the text itself is never shown).",
        choices=("random", "similar"),
        group="inference",
    )
    few_shot_retriever: str = _key(
        "all-minilm-l6-v2",
        "Sentence encoder for few_shot_selection: similar (mean-pooled, cosine): an alias, HF directory or hub id.",
        group="inference",
    )
    per_device_eval_batch_size: int = _key(
        16, "Prompts generated per batch.", minimum=1, group="inference", resume_neutral=True
    )
    max_new_tokens: int = _key(
        16, "Tokens generated per answer at most.", minimum=1, group="inference", resume_neutral=True
    )
    do_sample: bool = _key(
        False,
        "Sample instead of greedy decoding (greedy is the honest default).",
        group="inference",
        resume_neutral=True,
    )
    temperature: float = _key(
        1.0, "Sampling temperature (only with do_sample).", minimum=0, group="inference", resume_neutral=True
    )
    top_p: float = _key(
        1.0, "Nucleus sampling mass (only with do_sample).", minimum=0, group="inference", resume_neutral=True
    )
    eval_output_dir: str | None = _key(
        None,
        "Where generate-eval writes; default: output_dir/eval.",
        group="inference",
        resume_neutral=True,
        tunable=False,
    )
    # --- hyperparameter search ---
    tune: dict | None = _key(
        None,
        "instructemo tune: the search space and study settings, e.g. {trials: 20, space: {learning_rate: "
        "{low: 5e-5, high: 1e-3, log: true}, lora_rank: [4, 8, 16]}}; see `instructemo tune --help`.",
        group="tune",
        resume_neutral=True,
        tunable=False,
    )

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
    """Every key under its group, in declaration order."""
    return {group: [name for name, f in FIELDS.items() if f.metadata["group"] == group] for group in GROUPS}


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
    return _allowed_types(_HINTS[key])


def _allowed_types(hint: Any) -> tuple[type, ...]:
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return tuple(t for t in typing.get_args(hint))
    return (hint,)


def _check_value(key: str, value: Any) -> Any:
    allowed = _allowed_types(_HINTS[key])
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
