"""The one way a trained run (or a base model) is loaded for inference: weights, tokenizer, and one device.

Every reader of a run comes through here: the hf and dense engines (so generate-eval, predict, calibrate,
classify, serve and the web UI), vLLM's merged model, and export. A causal LM comes as the base alone, the base
with its LoRA adapter merged in, or a fully fine-tuned directory; a classification head as the base with its
adapter merged, or a fully fine-tuned directory.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import torch

from instructemo.data.labels import LabelSpace
from instructemo.errors import UserError
from instructemo.models.load import load_causal_lm, load_sequence_classifier, load_tokenizer, require_finite_weights
from instructemo.run.saved_model import has_tokenizer, saved_model_kind

log = logging.getLogger(__name__)

DEVICE_SETTING = re.compile(r"auto|cpu|cuda(:\d+)?")


def pick_device(setting: str, shard: int | None = None) -> torch.device:
    """`device: auto` (a CUDA GPU when torch sees one, else the CPU), cpu, cuda or cuda:N.

    With auto, the shard-th process of a sharded predict takes GPU shard % count, so N shards spread over the GPUs.
    """
    if not DEVICE_SETTING.fullmatch(setting):
        raise UserError(f"device: {setting!r} is not one of auto, cpu, cuda or cuda:N (N a GPU index)")
    count = cuda_devices()
    if setting == "cpu" or (setting == "auto" and count == 0):
        return torch.device("cpu")
    if count == 0:
        raise UserError(f"device: {setting}, but torch sees no CUDA GPU on this machine; set device: auto or cpu")
    if setting == "auto":
        index = (shard or 0) % count
    elif setting == "cuda":
        index = torch.cuda.current_device()
    else:
        index = int(setting.split(":")[1])
    if index >= count:
        raise UserError(f"device: {setting}, but this machine has {count} GPU(s) (cuda:0 to cuda:{count - 1})")
    return torch.device("cuda", index)


def cuda_devices() -> int:
    """How many CUDA GPUs torch can use here (0 on a CPU machine)."""
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def place(model, device: torch.device):
    """Move a loaded model onto its device: the one place that happens (tests without a GPU record it here)."""
    return model.to(device)


def load_causal_run(
    base_path: str,
    adapter_dir: Path | None,
    *,
    device: torch.device,
    flash_attn: str,
    bf16: bool,
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
):
    """(model, tokenizer) on `device`: the base alone, the base with its adapter merged, or a fine-tuned directory."""
    options = dict(
        flash_attn=flash_attn, bf16=bf16, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle, device=device
    )
    kind = saved_model_kind(adapter_dir)
    if kind == "full":
        model = load_causal_lm(str(adapter_dir), **options)
        require_finite_weights(adapter_dir, model)
        tokenizer_path = str(adapter_dir)
    else:
        if adapter_dir is not None and kind is None:
            raise UserError(
                f"{adapter_dir} holds neither an adapter nor a model; train first or fix adapter_name_or_path"
            )
        if adapter_dir is not None:
            require_finite_weights(adapter_dir)
        model = load_causal_lm(base_path, **options)
        tokenizer_path = base_path
        if adapter_dir is not None:
            from peft import PeftModel

            # Merged weights generate as fast as the base model.
            model = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
            tokenizer_path = str(adapter_dir) if has_tokenizer(adapter_dir) else base_path
    log.info("model on %s", device)
    return place(model.eval(), device), load_tokenizer(tokenizer_path, trust_remote_code=trust_remote_code)


def load_head_run(
    base_path: str,
    adapter_dir: Path,
    space: LabelSpace,
    *,
    device: torch.device,
    flash_attn: str,
    bf16: bool,
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
):
    """(model, tokenizer) on `device`: a classification head, its base with the adapter merged or fully fine-tuned."""
    full_model = saved_model_kind(adapter_dir) == "full"
    if not full_model:
        require_finite_weights(adapter_dir)
    tokenizer = load_tokenizer(str(adapter_dir), trust_remote_code=trust_remote_code, chat=False)
    model = load_sequence_classifier(
        str(adapter_dir) if full_model else base_path,
        list(space.names),
        multi_label=space.multi_label,
        flash_attn=flash_attn,
        trust_remote_code=trust_remote_code,
        allow_pickle=allow_pickle,
        device=device,
    )
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    if full_model:
        require_finite_weights(adapter_dir, model)
    else:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()  # the saved head comes with it
    log.info("model on %s", device)
    model = model.to(torch.bfloat16 if bf16 else torch.float32).eval()
    return place(model, device), tokenizer
