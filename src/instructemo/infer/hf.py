"""Batched generation with transformers."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..errors import UserError
from ..models import load_causal_lm, load_tokenizer

log = logging.getLogger(__name__)


def load_for_inference(base_path: str, adapter_dir: Path | None, *, flash_attn: str, bf16: bool):
    """(model, tokenizer): the base alone, base + LoRA adapter merged, or a fully fine-tuned directory."""
    if adapter_dir is not None and (adapter_dir / "config.json").is_file():
        return load_causal_lm(str(adapter_dir), flash_attn=flash_attn, bf16=bf16), load_tokenizer(str(adapter_dir))
    model = load_causal_lm(base_path, flash_attn=flash_attn, bf16=bf16)
    if adapter_dir is None:
        return model, load_tokenizer(base_path)
    if not (adapter_dir / "adapter_config.json").is_file():
        raise UserError(f"{adapter_dir} holds neither an adapter nor a model; train first or fix adapter_name_or_path")
    from peft import PeftModel

    # Merged weights generate as fast as the base model.
    model = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    has_tokenizer = (adapter_dir / "tokenizer_config.json").is_file()
    return model, load_tokenizer(str(adapter_dir) if has_tokenizer else base_path)


@torch.inference_mode()
def generate(
    model, tokenizer, conversations: list[list[dict]], *, batch_size: int, max_new_tokens: int,
    do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0, seed: int = 0,
) -> list[str]:
    """The model's answer to each conversation, in input order (greedy unless do_sample)."""
    tokenizer.padding_side = "left"
    prompts = [tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=False) for c in conversations]
    lengths = [len(ids) for ids in tokenizer(prompts, add_special_tokens=False)["input_ids"]]
    # Similar lengths share a batch, so little compute goes to padding.
    order = sorted(range(len(prompts)), key=lambda i: -lengths[i])
    stop_ids = {tokenizer.eos_token_id, *_as_list(model.generation_config.eos_token_id)} - {None}
    sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p} if do_sample else {"do_sample": False}
    if do_sample:
        torch.manual_seed(seed)
    answers: list[str] = [""] * len(prompts)
    model.eval()
    with tqdm(total=len(prompts), desc="generating", unit="ex") as progress:
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            batch = tokenizer([prompts[i] for i in chunk], return_tensors="pt", padding=True, add_special_tokens=False)
            batch = batch.to(model.device)
            output = model.generate(
                **batch, max_new_tokens=max_new_tokens, eos_token_id=sorted(stop_ids),
                pad_token_id=tokenizer.pad_token_id, top_k=None, **sampling,
            )
            new_tokens = output[:, batch["input_ids"].shape[1] :]
            for i, text in zip(chunk, tokenizer.batch_decode(new_tokens, skip_special_tokens=True)):
                answers[i] = text.strip()
            progress.update(len(chunk))
    return answers


def _as_list(value) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]
