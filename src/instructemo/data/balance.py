"""Label imbalance for generative training: oversampling and per-row loss weights.

Both rest on one number per row: the inverse frequency of its rarest label
(a row with no label counts as the label "none"), scaled so the rows average
1. A row carrying `surprise` (5% of SemEval tweets) weighs several times a
row whose rarest label is `anger` (37%), so rare labels are not drowned out.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Sequence

log = logging.getLogger(__name__)

NO_LABEL = "<none>"


def rarest_label_weights(label_sets: Sequence[Sequence[str]]) -> list[float]:
    """One weight per row: 1 / frequency of its rarest label, normalised to mean 1."""
    if not label_sets:
        return []
    counts = Counter(label for labels in label_sets for label in (labels or (NO_LABEL,)))
    raw = [len(label_sets) / min(counts[label] for label in (labels or (NO_LABEL,))) for labels in label_sets]
    mean = sum(raw) / len(raw)
    return [w / mean for w in raw]


def oversample_counts(weights: Sequence[float]) -> list[int]:
    """How many copies of each row to train on: its weight rounded, at least one."""
    return [max(1, round(w)) for w in weights]


def balanced_examples(policy: str, label_sets: list[tuple[str, ...]], examples: list[dict]) -> list[dict]:
    """The training rows under a label_balancing policy: as they are, with a loss weight each, or oversampled."""
    if policy == "none":
        return examples
    weights = rarest_label_weights(label_sets)
    if policy == "loss_weight":
        log.info("loss weights by rarest label: %.2f to %.2f", min(weights), max(weights))
        return [{**e, "weight": w} for e, w in zip(examples, weights)]
    counts = oversample_counts(weights)
    log.info("oversampling rare labels: %d rows become %d", len(examples), sum(counts))
    return [e for e, n in zip(examples, counts) for _ in range(n)]
