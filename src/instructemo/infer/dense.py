"""Inference for `stage: head` runs: the classification head's probabilities for each text."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from instructemo.data.labels import LabelSpace
from instructemo.errors import UserError
from instructemo.infer.loading import load_head_run
from instructemo.models.batching import longest_first

log = logging.getLogger(__name__)


class DenseEngine:
    """A sequence classifier (base plus adapter, or a fully fine-tuned model) and its tokenizer."""

    def __init__(self, cfg, base_path: str, adapter: Path | None, space: LabelSpace, bf16: bool, device: torch.device):
        if cfg.backend != "hf":
            raise UserError("stage: head runs are served by backend: hf (vLLM generates text); set backend: hf")
        if adapter is None:
            raise UserError(
                f"no trained classifier in {cfg.output_dir}: a classification head is new at training time; run instructemo sft first"
            )
        self.progress = True  # a progress bar per call (off when serving)
        self.batch_size = cfg.per_device_eval_batch_size
        self.cutoff_len = cfg.cutoff_len
        self.multi_label = space.multi_label
        self.model, self.tokenizer = load_head_run(
            base_path,
            adapter,
            space,
            device=device,
            flash_attn=cfg.flash_attn,
            bf16=bf16,
            trust_remote_code=cfg.trust_remote_code,
            allow_pickle=cfg.allow_pickle_weights,
        )

    def probabilities(self, texts: list[str]) -> np.ndarray:
        """Rows x labels: softmax over the labels (single-label) or each label's sigmoid (multi-label)."""
        return head_probabilities(
            self.model, self.tokenizer, texts, self.cutoff_len, self.batch_size, self.multi_label, self.progress
        )


@torch.inference_mode()
def head_probabilities(
    model, tokenizer, texts: list[str], cutoff_len: int, batch_size: int, multi_label: bool, progress: bool = False
) -> np.ndarray:
    """A sequence classifier's label probabilities for `texts`, in batches of similar lengths."""
    encoded = tokenizer(texts, truncation=True, max_length=cutoff_len)["input_ids"]
    out = np.zeros((len(texts), model.config.num_labels), dtype=np.float64)
    for chunk in tqdm(
        longest_first([len(ids) for ids in encoded], batch_size), desc="classifying", unit="batch", disable=not progress
    ):
        batch = tokenizer.pad({"input_ids": [encoded[i] for i in chunk]}, return_tensors="pt")
        logits = model(**batch.to(model.device)).logits.float()
        probs = logits.sigmoid() if multi_label else logits.softmax(-1)
        out[chunk] = probs.cpu().numpy()
    return out
