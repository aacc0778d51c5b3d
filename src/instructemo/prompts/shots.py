"""Few-shot prompting: labelled training texts shown to an instruct model as earlier turns of the conversation.

`few_shot: k` picks k examples of each label from the training split (the
shots never come from the split being judged):

- random: one draw with the run's seed, the same shots before every text, in
  a shuffled order (so no label is always nearest the question). Every prompt
  then starts with the same turns, which score mode encodes once.
- similar: for each text, the k training texts of each label nearest to it by
  a sentence encoder (the embedded MiniLM by default: mean-pooled, normalised,
  cosine), the nearest last. A training text equal to the text being
  classified is never shown: a duplicate across splits would hand the model
  its answer.

For multi-label data, "of each label" means rows that carry the label.
"""

from __future__ import annotations

import logging
import random

import numpy as np
import torch

from instructemo.data.labels import LabelSpace
from instructemo.data.records import Record
from instructemo.errors import shown
from instructemo.models.load import resolve_model_path

log = logging.getLogger(__name__)

EMBED_BATCH = 64
EMBED_MAX_TOKENS = 256
QUERY_CHUNK = 256


def _key(text: str) -> str:
    return " ".join(text.split()).casefold()


class ShotPicker:
    """Chooses the in-context examples for each text to classify."""

    def __init__(self, pool: list[Record], space: LabelSpace, k: int, selection: str, seed: int, retriever: str):
        self.space, self.k, self.selection = space, k, selection
        self.by_label = {n: [i for i, r in enumerate(pool) if n in r.labels] for n in space.names}
        missing = [n for n, rows in self.by_label.items() if not rows]
        if missing:
            log.warning("few_shot: the training split has no row of %s; those labels get no example", shown(missing))
        self.pool = pool
        self._fixed: list[Record] | None = None
        self._encoder = None
        if selection == "random":
            rng = random.Random(seed)
            chosen: list[int] = []
            for name in space.names:
                candidates = [i for i in self.by_label[name] if i not in chosen]
                chosen += rng.sample(candidates, min(k, len(candidates)))
            rng.shuffle(chosen)
            self._fixed = [pool[i] for i in chosen]
        else:
            self._encoder = SentenceEncoder(retriever)
            log.info("few_shot: embedding %d training texts for similar selection", len(pool))
            self._pool_vectors = self._encoder.encode([r.text for r in pool])
            self._pool_keys = [_key(r.text) for r in pool]

    def for_texts(self, texts: list[str]) -> list[list[Record]]:
        """The shots to show before each text."""
        if self._fixed is not None:
            return [self._fixed for _ in texts]
        shots = []
        for start in range(0, len(texts), QUERY_CHUNK):  # a chunk's similarities: QUERY_CHUNK x pool floats
            chunk = texts[start : start + QUERY_CHUNK]
            similarity = self._encoder.encode(chunk) @ self._pool_vectors.T
            shots += [self._nearest(text, row) for text, row in zip(chunk, similarity)]
        return shots

    def _nearest(self, text: str, similarity: np.ndarray) -> list[Record]:
        own = _key(text)
        chosen: dict[int, float] = {}
        for name in self.space.names:
            rows = np.asarray(self.by_label[name], dtype=np.int64)
            taken = 0
            for i in rows[np.argsort(-similarity[rows], kind="stable")].tolist():
                if taken == self.k:
                    break
                if i in chosen or self._pool_keys[i] == own:
                    continue
                chosen[i] = float(similarity[i])
                taken += 1
        return [self.pool[i] for i in sorted(chosen, key=chosen.get)]  # the nearest last, beside the question


class SentenceEncoder:
    """Mean-pooled, L2-normalised token embeddings of a transformer encoder (sentence-transformers' recipe)."""

    def __init__(self, name_or_path: str):
        from transformers import AutoModel, AutoTokenizer

        path = resolve_model_path(name_or_path)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).eval()

    @torch.inference_mode()
    def encode(self, texts: list[str]) -> np.ndarray:
        vectors = []
        for start in range(0, len(texts), EMBED_BATCH):
            batch = self.tokenizer(
                texts[start : start + EMBED_BATCH],
                padding=True,
                truncation=True,
                max_length=EMBED_MAX_TOKENS,
                return_tensors="pt",
            )
            hidden = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            vectors.append(torch.nn.functional.normalize(pooled, dim=-1).float().numpy())
        return np.concatenate(vectors) if vectors else np.zeros((0, 0), dtype=np.float32)
