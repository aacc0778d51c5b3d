"""Classification metrics in which an invalid answer is always wrong.

Single-label: an invalid answer is a prediction of no class, so it is a miss
for its gold class and never a hit. Multi-label: it predicts no labels, and it
scores 0 for exact match and Jaccard even when the gold set is empty.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    jaccard_score,
    multilabel_confusion_matrix,
    precision_recall_curve,
    precision_recall_fscore_support,
)

from instructemo.data.labels import LabelSpace, binarize

INVALID = "<invalid>"


def headline_metric(multi_label: bool) -> str:
    """The one figure a log line, a comparison or an ensemble leads with: Jaccard for multi-label, else accuracy."""
    return "jaccard" if multi_label else "accuracy"


def is_multi_label(evaluation: dict) -> bool:
    """Whether an evaluation's metrics.json is of a multi-label task: its own record, else (written before it kept
    one) whether its metrics hold the multi-label figures."""
    if "multi_label" in evaluation:
        return bool(evaluation["multi_label"])
    return "jaccard" in evaluation["metrics"]


def score(
    gold: Sequence[tuple[str, ...]],
    predicted: Sequence[tuple[str, ...] | None],
    space: LabelSpace,
    probabilities: np.ndarray | None = None,
) -> dict:
    """All metrics for one evaluation, as plain JSON-ready values.

    With `probabilities` (rows x labels, from score mode) the expected
    calibration error is added.
    """
    if len(gold) != len(predicted):
        raise ValueError(f"{len(gold)} gold rows but {len(predicted)} predictions")
    invalid = sum(p is None for p in predicted)
    common = {"n": len(gold), "invalid": invalid, "invalid_rate": invalid / len(gold) if gold else 0.0}
    body = _multi_label(gold, predicted, space) if space.multi_label else _single_label(gold, predicted, space)
    if probabilities is not None:
        body["ece"] = _calibration(gold, predicted, space, np.asarray(probabilities))
    return {**common, **body}


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int = 10) -> float:
    """Mean |accuracy - confidence| over equal-width confidence bins, weighted by bin size."""
    confidence, correct = np.asarray(confidence, dtype=float), np.asarray(correct, dtype=float)
    if confidence.size == 0:
        return 0.0
    which = np.minimum((confidence * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        in_bin = which == b
        if in_bin.any():
            total += in_bin.sum() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    return float(total / confidence.size)


def _calibration(gold, predicted, space: LabelSpace, probabilities: np.ndarray) -> float:
    if space.multi_label:
        # Each label's probability against whether the label is present.
        return expected_calibration_error(probabilities.ravel(), binarize(gold, space).ravel())
    index = {name: i for i, name in enumerate(space.names)}
    top = probabilities.argmax(axis=1)
    correct = np.array([index[g[0]] == t for g, t in zip(gold, top)])
    return expected_calibration_error(probabilities.max(axis=1), correct)


def _per_class(y_true, y_pred, names, labels) -> dict:
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, average=None, zero_division=0
    )
    return {
        name: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
        for name, p, r, f, s in zip(names, precision, recall, f1, support)
    }


def _averages(y_true, y_pred, labels) -> dict:
    return {
        f"{avg}_f1": float(f1_score(y_true, y_pred, labels=labels, average=avg, zero_division=0))
        for avg in ("macro", "micro", "weighted")
    }


def _single_label(gold, predicted, space: LabelSpace) -> dict:
    names = list(space.names)
    y_true = [g[0] for g in gold]
    y_pred = [p[0] if p else INVALID for p in predicted]
    matrix = confusion_matrix(y_true, y_pred, labels=names + [INVALID])[: len(names)]
    return {
        "accuracy": float(np.mean([t == p for t, p in zip(y_true, y_pred)])),
        **_averages(y_true, y_pred, names),
        "per_class": _per_class(y_true, y_pred, names, names),
        "confusion_matrix": {"labels": names, "columns": names + ["invalid"], "counts": matrix.tolist()},
    }


def _multi_label(gold, predicted, space: LabelSpace) -> dict:
    names = list(space.names)
    y_true, y_pred = binarize(gold, space), binarize(predicted, space)
    # An invalid answer scores 0 on both, even against an empty gold set: score the valid rows, count the rest as 0.
    valid = np.array([p is not None for p in predicted], dtype=bool)
    share = valid.mean() if len(valid) else 0.0
    exact = accuracy_score(y_true[valid], y_pred[valid]) * share if valid.any() else 0.0
    # SemEval-2018 E-c scores an empty gold set matched by an empty answer as 1 (zero_division=1).
    jaccard = (
        jaccard_score(y_true[valid], y_pred[valid], average="samples", zero_division=1) * share if valid.any() else 0.0
    )
    columns = list(range(len(names)))
    per_label_confusion = multilabel_confusion_matrix(y_true, y_pred)
    return {
        "accuracy": float(exact),
        "exact_match": float(exact),
        "jaccard": float(jaccard),
        **_averages(y_true, y_pred, columns),
        "per_class": _per_class(y_true, y_pred, names, columns),
        "label_confusion": {
            name: {"tp": int(m[1, 1]), "fp": int(m[0, 1]), "fn": int(m[1, 0]), "tn": int(m[0, 0])}
            for name, m in zip(names, per_label_confusion)
        },
    }


def best_thresholds(probabilities: np.ndarray, gold: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per label, the threshold (predict when p >= t) that maximises F1 on these rows, and that F1.

    The candidates are precision_recall_curve's: every distinct probability,
    so equal probabilities are predicted together; of equal F1s the highest
    threshold wins. A label never present in `gold` keeps threshold 1.0 (F1 0
    either way).
    """
    thresholds, f1s = np.ones(probabilities.shape[1]), np.zeros(probabilities.shape[1])
    for k in range(probabilities.shape[1]):
        y = np.asarray(gold[:, k]).astype(bool)
        if not y.any():
            continue
        precision, recall, cuts = precision_recall_curve(y, probabilities[:, k])
        precision, recall = precision[:-1], recall[:-1]  # the last point has no threshold
        with np.errstate(invalid="ignore", divide="ignore"):
            f1 = np.nan_to_num(2 * precision * recall / (precision + recall))
        best = len(f1) - 1 - int(np.argmax(f1[::-1]))  # the highest threshold among equal F1s
        thresholds[k], f1s[k] = cuts[best], f1[best]
    return thresholds, f1s
