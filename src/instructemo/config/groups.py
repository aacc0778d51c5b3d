"""The config keys, declared once each, in groups: the model, the data, fine-tuning, inference, the search.

One flat YAML file sets them all (LLaMA-Factory's dialect); `schema.Config`
is every group in one object, as the verbs receive it. A key's group is the
class that declares it: --help, the config reference and the web UI list the
keys by group, and every list of keys with a property (resume-neutral,
tunable, shown in the web UI, derived into the Trainer's arguments) is read
off the keys' metadata, never kept by hand.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar


def _key(
    default: Any,
    help: str,
    choices: tuple | None = None,
    minimum: float | None = None,
    maximum: float | None = None,
    trainer: bool = False,
    *,
    resume_neutral: bool = False,
    tunable: bool = True,
    webui: bool = False,
    derives: tuple[str, ...] = (),
):
    """A config key and everything instructemo knows about it, declared once; the key lists (schema.py) derive from it.

    - `trainer`: transformers' TrainingArguments (trl's SFTConfig) has a field of this name and meaning, and
      receives the value as it is; the key is declared here for its default and its check.
    - `resume_neutral`: it does not change what training computes, so a resumed run may differ in it.
    - `tunable`: `instructemo tune` may search it (False: what a study is about, or what tune sets itself).
    - `webui`: the web UI's Train tab shows it.
    - `derives`: the Trainer's fields instructemo sets from this key; training_args may not set them.
    """
    metadata = {
        "help": help,
        "choices": choices,
        "minimum": minimum,
        "maximum": maximum,
        "trainer": trainer,
        "resume_neutral": resume_neutral,
        "tunable": tunable,
        "webui": webui,
        "derives": derives,
    }
    return field(default=default, metadata=metadata)


@dataclass
class ModelKeys:
    """The model: what to load, where, in which precision and with which attention."""

    GROUP: ClassVar[str] = "model"

    model_name_or_path: str = _key(
        "smollm2-135m-instruct",
        "Hub id, local HF directory, .gguf file, or alias (smollm2-135m-instruct, gemma3-270m).",
    )
    adapter_name_or_path: str | None = _key(
        None,
        "Adapter or fine-tuned model to evaluate; default: output_dir if it holds one.",
        resume_neutral=True,
        tunable=False,
    )
    flash_attn: str = _key(
        "auto",
        "Attention: auto (fa2 on CUDA when installed, else sdpa), fa2, sdpa or eager.",
        choices=("auto", "fa2", "sdpa", "eager"),
    )
    device: str = _key(
        "auto",
        "Where inference runs (generate-eval, predict, calibrate, classify, serve, webui): auto (a CUDA GPU when "
        "torch sees one, else the CPU; predict --shard i takes GPU i % count), cpu, cuda or cuda:N. Training uses "
        "the GPUs accelerate finds (CUDA_VISIBLE_DEVICES chooses), or the CPU with device: cpu.",
        resume_neutral=True,
        tunable=False,
    )
    bf16: bool | str = _key(
        "auto",
        "bfloat16 weights and autocast: auto (when the hardware has it), true or false.",
        choices=("auto",),
        derives=("bf16", "fp16"),
    )


@dataclass
class DataKeys:
    """The data: which dataset and splits, its columns and labels, the prompt template, cutoff."""

    GROUP: ClassVar[str] = "data"

    dataset: str = _key(
        "emotion",
        "Training data: a name in the registry (optionally name:split) or a CSV/TSV/JSONL path.",
        tunable=False,
    )
    eval_dataset: str | None = _key(
        None,
        "Evaluation data, same forms as dataset; default: the test (else dev) split of dataset.",
        resume_neutral=True,
        tunable=False,
    )
    dataset_dir: str = _key(
        "data",
        "Folder searched first for dataset files and an extra datasets.yaml registry.",
        tunable=False,
    )
    text_column: str | None = _key(
        None, "Text column of a CSV/TSV/JSONL path dataset; inferred when unset.", tunable=False
    )
    label_column: str | None = _key(
        None, "Label column of a CSV/TSV/JSONL path dataset; inferred when unset.", tunable=False
    )
    labels: list | None = _key(
        None,
        "The label names of a dataset given by path, in their canonical order: rows with other labels are bad "
        "rows, and integer labels 0, 1, ... index this list. Unset: the labels found in the file (sorted), which "
        "stops on labels that differ only in case or are too rare to be real.",
        tunable=False,
    )
    template: str = _key(
        "auto",
        "Prompt template: auto (the dataset's), single_label, multi_label, sentiment, or a .jinja path.",
    )
    on_bad_rows: str = _key(
        "error",
        "Rows with empty text, unknown labels, wrong columns, invalid UTF-8 or a repeated id: "
        "error (stop, with their lines) or skip (leave them out and report them).",
        choices=("error", "skip"),
    )
    max_samples: int | None = _key(None, "Use at most this many training rows (in file order).", minimum=1, webui=True)
    max_eval_samples: int | None = _key(
        None,
        "Use at most this many evaluation rows (in file order).",
        minimum=1,
        resume_neutral=True,
        tunable=False,
    )
    cutoff_len: int = _key(
        512,
        "Maximum tokens of prompt plus answer; longer training rows are truncated.",
        minimum=16,
        webui=True,
        derives=("max_length",),
    )


@dataclass
class FinetuningKeys:
    """Training: the stage, the adapter, the optimizer schedule, selection, saving and launch."""

    GROUP: ClassVar[str] = "finetuning"

    stage: str = _key(
        "sft",
        "What `instructemo sft` trains: sft (generative instruction tuning: the model writes the label) or "
        "head (a classification head on AutoModelForSequenceClassification, for encoders such as BERT or MiniLM "
        "and decoders with a score head).",
        choices=("sft", "head"),
        webui=True,
    )
    class_weights: str | dict = _key(
        "none",
        "stage head: weigh the loss per class: none, balanced (inverse class frequency; for multi-label "
        "the negative/positive ratio per label) or a mapping {label: weight} (unnamed labels weigh 1).",
        choices=("none", "balanced"),
    )
    finetuning_type: str = _key(
        "lora",
        "lora, qlora (LoRA on a 4-bit NF4 base; needs a CUDA GPU and bitsandbytes), ia3, or full.",
        choices=("lora", "qlora", "ia3", "full"),
        webui=True,
    )
    lora_rank: int = _key(8, "LoRA rank r.", minimum=1, webui=True)
    lora_alpha: float | None = _key(None, "LoRA alpha; default: 2 * lora_rank.", minimum=0)
    lora_dropout: float = _key(0.0, "LoRA dropout probability.", minimum=0)
    lora_target: str = _key(
        "all",
        "Modules that get LoRA: all (every linear layer but the LM head) or comma-separated names.",
    )
    per_device_train_batch_size: int = _key(8, "Training batch size per device.", minimum=1, trainer=True, webui=True)
    gradient_accumulation_steps: int = _key(1, "Batches accumulated per optimizer step.", minimum=1, trainer=True)
    learning_rate: float = _key(1e-4, "Peak learning rate (at most 1).", minimum=0, maximum=1, trainer=True, webui=True)
    num_train_epochs: float = _key(1.0, "Training epochs.", minimum=0, maximum=10000, trainer=True, webui=True)
    max_steps: int = _key(
        -1,
        "Stop after this many optimizer steps; -1 trains for num_train_epochs.",
        trainer=True,
        webui=True,
    )
    lr_scheduler_type: str = _key(
        "cosine",
        "Learning-rate schedule.",
        choices=("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup"),
        trainer=True,
    )
    warmup_steps: int = _key(0, "Linear warm-up steps.", minimum=0, trainer=True)
    weight_decay: float = _key(0.0, "AdamW weight decay.", minimum=0, maximum=1, trainer=True)
    gradient_checkpointing: bool = _key(False, "Trade compute for memory; slow for small models, so off.", trainer=True)
    group_by_length: bool | str = _key(
        "auto",
        "Batch rows of similar length together (less padding), in shuffled batch order: true; false: plain "
        "random batches; auto: random when sft packs its rows (see packing), length-grouped otherwise.",
        choices=("auto",),
        derives=("train_sampling_strategy",),
    )
    packing: bool = _key(
        True,
        "Pack each batch's rows, after the shared prefix, side by side into as few rows as its longest row "
        "needs, each attending to itself only: the same loss and gradients without computing padding, so random "
        "batches train nearly as fast as length-grouped ones. Used where shared_prefix is; false pads instead.",
        derives=("packing",),
    )
    shared_prefix: bool = _key(
        True,
        "Encode the prompt tokens every row of a batch shares (system prompt, instruction) once per batch "
        "instead of once per row: the same loss and gradients for less compute. Used with one process and "
        "without FlashAttention-2 or gradient checkpointing; false turns it off.",
    )
    logging_steps: int = _key(
        10,
        "Log loss every this many optimizer steps.",
        minimum=1,
        trainer=True,
        resume_neutral=True,
        webui=True,
    )
    label_balancing: str = _key(
        "none",
        "Imbalance: none, oversample (repeat rows carrying rare labels) or loss_weight "
        "(weight each row's loss by the inverse frequency of its rarest label).",
        choices=("none", "oversample", "loss_weight"),
    )
    select_best: bool = _key(
        False,
        "Score the dev split greedily at each epoch's end (and every select_steps) and keep the "
        "weights with the best select_metric instead of the last ones.",
        tunable=False,
    )
    select_steps: int | None = _key(None, "With select_best: also score every this many optimizer steps.", minimum=1)
    select_dataset: str | None = _key(
        None,
        "Split for checkpoint selection and threshold calibration; default: the dataset's dev split.",
        tunable=False,
    )
    select_metric: str = _key(
        "macro_f1",
        "Metric that picks the checkpoint (higher is better).",
        choices=("macro_f1", "micro_f1", "accuracy", "jaccard", "exact_match"),
        tunable=False,
    )
    max_select_samples: int | None = _key(
        300, "Dev rows scored at each selection point (the first ones).", minimum=1, tunable=False
    )
    deepspeed: str | None = _key(
        None,
        "DeepSpeed JSON config (examples/deepspeed/ds_z2.json, ds_z3.json, *_offload.json); needs the deepspeed package.",
        trainer=True,
        tunable=False,
    )
    nproc_per_node: int = _key(
        1,
        "Training processes on this machine; above 1, sft re-launches itself under torchrun "
        "(multi-node through NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT).",
        minimum=1,
        tunable=False,
    )
    save_steps: int | None = _key(
        500,
        "Save a resumable checkpoint (weights, optimizer, scheduler, RNG, data position) every this many "
        "optimizer steps into output_dir/checkpoint-N; unset: none.",
        minimum=1,
        resume_neutral=True,
        derives=("save_strategy", "save_steps"),
    )
    save_total_limit: int = _key(
        2, "Checkpoints kept; older ones are deleted.", minimum=1, trainer=True, resume_neutral=True
    )
    resume: str = _key(
        "none",
        "none, auto (continue from the last complete checkpoint in output_dir), or a checkpoint directory.",
        resume_neutral=True,
        tunable=False,
        webui=True,
    )
    training_args: dict | None = _key(
        None,
        "Any other field of transformers' TrainingArguments (trl's SFTConfig for stage sft), passed as it is, "
        "e.g. {max_grad_norm: 0.5, adam_beta2: 0.95, optim: adamw_torch_fused}; not the keys of this config, "
        "nor the fields instructemo derives from them (bf16, save_strategy, max_length, ...).",
    )
    overwrite_output_dir: bool = _key(
        False,
        "Replace a previous run in output_dir instead of refusing to mix runs.",
        resume_neutral=True,
        tunable=False,
        webui=True,
    )
    trust_remote_code: bool = _key(
        False,
        "Run Python code shipped with a model (only for sources you trust).",
        resume_neutral=True,
    )
    allow_pickle_weights: bool = _key(
        False,
        "Load pickled .bin weights, which can run code when unpickled; default: safetensors only.",
        resume_neutral=True,
    )
    output_dir: str = _key(
        "saves/run",
        "Where the adapter, tokenizer, config, logs and evaluations go.",
        trainer=True,
        resume_neutral=True,
        tunable=False,
    )
    seed: int = _key(
        42,
        "Random seed for initialisation, shuffling and sampling.",
        trainer=True,
        tunable=False,
        webui=True,
        derives=("data_seed",),
    )
    report_to: str = _key(
        "none",
        "Experiment tracker: none, tensorboard or wandb.",
        choices=("none", "tensorboard", "wandb"),
        resume_neutral=True,
        derives=("report_to",),
    )
    do_eval: bool = _key(False, "After sft, run generate-eval on eval_dataset.", resume_neutral=True, tunable=False)


@dataclass
class InferenceKeys:
    """Inference: backend, mode, decoding, few-shot prompting, where evaluations go."""

    GROUP: ClassVar[str] = "inference"

    backend: str = _key(
        "hf",
        "Inference engine: hf (transformers) or vllm (offline LLM engine).",
        choices=("hf", "vllm"),
        resume_neutral=True,
    )
    mode: str = _key(
        "generate",
        "generate (decode an answer, parse it) or score (likelihood of every label: always valid, with probabilities).",
        choices=("generate", "score"),
        resume_neutral=True,
    )
    score_method: str = _key(
        "sequence",
        "Single-label score mode: sequence (the likelihood of each label's whole answer) or first_token (the "
        "probability of each label's first answer token: one forward pass, and what an export --format "
        "vllm-classify model computes in vLLM).",
        choices=("sequence", "first_token"),
    )
    score_threshold: float | None = _key(
        None,
        "Multi-label score mode: predict labels whose probability reaches this, for a run without calibrated "
        "thresholds (thresholds.json, from instructemo calibrate, takes precedence); default 0.5.",
        minimum=0,
        resume_neutral=True,
    )
    tensor_parallel_size: int = _key(1, "vLLM: GPUs to split the model across.", minimum=1, resume_neutral=True)
    gpu_memory_utilization: float = _key(
        0.9, "vLLM: share of GPU memory the engine may take.", minimum=0, resume_neutral=True
    )
    vllm_merge_lora: bool | str = _key(
        "auto",
        "vLLM: serve a LoRA adapter merged into the base (auto: on CPU, where vLLM's LoRA kernels are slow) "
        "or through a LoRARequest (false).",
        choices=("auto",),
        resume_neutral=True,
    )
    few_shot: int = _key(
        0,
        "In-context examples per label, drawn from the training split and shown as earlier turns of the "
        "conversation before each text (an instruct model without training); 0: zero-shot.",
        minimum=0,
    )
    few_shot_selection: str = _key(
        "random",
        "How the few_shot examples are chosen: random (the same ones for every text, drawn with seed) or "
        "similar (for each text, the most similar training texts of each label by few_shot_retriever's "
        "embeddings; a training text equal to the text itself is never shown).",
        choices=("random", "similar"),
    )
    few_shot_retriever: str = _key(
        "all-minilm-l6-v2",
        "Sentence encoder for few_shot_selection: similar (mean-pooled, cosine): an alias, HF directory or hub id.",
    )
    per_device_eval_batch_size: int = _key(16, "Prompts generated per batch.", minimum=1, resume_neutral=True)
    max_new_tokens: int = _key(16, "Tokens generated per answer at most.", minimum=1, resume_neutral=True)
    do_sample: bool = _key(
        False,
        "Sample instead of greedy decoding (greedy is the honest default).",
        resume_neutral=True,
    )
    temperature: float = _key(1.0, "Sampling temperature (only with do_sample).", minimum=0, resume_neutral=True)
    top_p: float = _key(1.0, "Nucleus sampling mass (only with do_sample).", minimum=0, resume_neutral=True)
    eval_output_dir: str | None = _key(
        None,
        "Where generate-eval writes; default: output_dir/eval.",
        resume_neutral=True,
        tunable=False,
    )


@dataclass
class TuneKeys:
    """The search instructemo tune runs over the other keys."""

    GROUP: ClassVar[str] = "tune"

    tune: dict | None = _key(
        None,
        "instructemo tune: the search space and study settings, e.g. {trials: 20, space: {learning_rate: "
        "{low: 5e-5, high: 1e-3, log: true}, lora_rank: [4, 8, 16]}}; see `instructemo tune --help`.",
        resume_neutral=True,
        tunable=False,
    )
