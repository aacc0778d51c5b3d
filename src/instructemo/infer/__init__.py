"""One inference interface over two engines (hf, vllm) and two modes (generate, score).

`generate` decodes an answer and parses it into labels; the answer may name no
label (invalid). `score` asks the model for the likelihood of every label's
answer after the prompt and returns probabilities, so every row gets a valid
label and a confidence.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from instructemo.config.schema import Config
from instructemo.data.labels import LabelSpace
from instructemo.errors import UserError
from instructemo.models.chat import answer_tokens, prompt_token_ids
from instructemo.prompts.parse import parse_labels

# Multi-label score mode without calibrated thresholds: the label is likelier than everything else that could come next.
DEFAULT_THRESHOLD = 0.5


@dataclass
class Classified:
    """What an engine said about each row."""

    labels: list[tuple[str, ...] | None]  # None: the answer named no label (generate mode only)
    answers: list[str] | None  # raw generations (generate mode)
    probabilities: np.ndarray | None  # rows x labels (score mode)
    unfinished: int = 0  # generated answers cut by max_new_tokens before the model ended its turn


def load_engine(cfg: Config, base_path: str, adapter: Path | None, bf16: bool, device):
    """The configured engine, with the base model plus adapter (or the fine-tuned model) loaded on `device`."""
    if cfg.backend == "vllm":
        from instructemo.infer.vllm import VLLMEngine

        return VLLMEngine(cfg, base_path, adapter, bf16, device)
    from instructemo.infer.hf import HFEngine

    return HFEngine.load(cfg, base_path, adapter, bf16, device)


def classify(
    cfg: Config, engine, conversations: list[list[dict]], space: LabelSpace, thresholds: np.ndarray | None = None
) -> Classified:
    """Labels for each conversation; in score mode with probabilities.

    Multi-label score mode predicts a label when its probability reaches its
    threshold (see `threshold_rule`).
    """
    if cfg.mode == "generate":
        answers = engine.generate(conversations)
        return Classified([parse_labels(a, space) for a in answers], answers, None, engine.unfinished)
    if space.multi_label:
        from instructemo.infer.multilabel import label_probabilities

        probabilities, answers = label_probabilities(engine, conversations, space)
        probabilities = finite_scores(probabilities)
        return Classified(
            decide(probabilities, space, thresholds, cfg.score_threshold), answers, probabilities, engine.unfinished
        )
    if cfg.score_method == "first_token":
        first = first_answer_tokens(engine.tokenizer, conversations[0], space)
        contexts = prompt_token_ids(engine.tokenizer, conversations)
        loglik = np.asarray(engine.score_tokens(contexts, [[t] for t in first]), dtype=np.float64)
    else:
        candidates = [space.answer([name]) for name in space.names]
        loglik = np.asarray(engine.score(conversations, candidates), dtype=np.float64)
    with np.errstate(invalid="ignore"):
        probabilities = np.exp(loglik - loglik.max(axis=1, keepdims=True))
        probabilities = finite_scores(probabilities / probabilities.sum(axis=1, keepdims=True))
    return Classified(decide(probabilities, space), None, probabilities)


def first_answer_tokens(tokenizer, conversation: list[dict], space: LabelSpace) -> list[int]:
    """Each label's first answer token, as trained; one label per token, else a one-line error naming the clash.

    A classifier over first tokens (score_method: first_token, and the vllm-classify export) can only tell
    labels apart when no two answers start with the same token.
    """
    if space.multi_label:
        raise UserError(
            "first-token scoring is single-label only: a multi-label answer lists several labels, so one token "
            "cannot stand for one label; use score_method: sequence, or stage: head for a classification head"
        )
    first = [answer_tokens(tokenizer, conversation, space.answer([name]))[0] for name in space.names]
    by_token: dict[int, list[str]] = {}
    for name, token in zip(space.names, first):
        by_token.setdefault(token, []).append(name)
    clashes = {token: names for token, names in by_token.items() if len(names) > 1}
    if clashes:
        shown = "; ".join(
            f"{' and '.join(names)} both start with {tokenizer.convert_ids_to_tokens(token)!r}"
            for token, names in clashes.items()
        )
        raise UserError(
            f"labels share a first token ({shown}): first-token scoring cannot tell them apart; rename the "
            "labels in the data so that each answer starts differently, or use score_method: sequence"
        )
    return first


def classify_dense(
    cfg: Config, engine, texts: list[str], space: LabelSpace, thresholds: np.ndarray | None = None
) -> Classified:
    """Labels and probabilities from a classification head (stage: head), with the same decision rules."""
    probabilities = finite_scores(engine.probabilities(texts))
    return Classified(decide(probabilities, space, thresholds, cfg.score_threshold), None, probabilities)


def finite_scores(scores: np.ndarray) -> np.ndarray:
    """The scores, or a one-line error when any is NaN: a label chosen from NaN is no answer at all.

    NaN only comes from broken weights (or a model that rules every label out).
    """
    broken = ~np.isfinite(scores)
    if broken.any():
        rows = int(broken.any(axis=1).sum()) if broken.ndim > 1 else int(broken.sum())
        raise UserError(
            f"the model's scores are not numbers (NaN) for {rows} of {len(scores)} texts: its weights are "
            "broken, e.g. by a training run that diverged; train it again with a lower learning_rate"
        )
    return scores


def threshold_rule(
    space: LabelSpace, thresholds: np.ndarray | None, score_threshold: float | None
) -> tuple[str, np.ndarray]:
    """The multi-label thresholds in force and where they come from; one rule everywhere:
    the calibrated per-label `thresholds` (thresholds.json) when the run has them, else
    `score_threshold` for every label, else 0.5 for every label."""
    if thresholds is not None:
        return "calibrated", np.asarray(thresholds, dtype=np.float64)
    if score_threshold is not None:
        return "score_threshold", np.full(len(space.names), score_threshold)
    return "default", np.full(len(space.names), DEFAULT_THRESHOLD)


def decide(
    probabilities: np.ndarray,
    space: LabelSpace,
    thresholds: np.ndarray | None = None,
    score_threshold: float | None = None,
) -> list[tuple[str, ...]]:
    """Single-label: the most probable label. Multi-label: every label at or above its threshold (threshold_rule)."""
    names = space.names
    if not space.multi_label:
        return [(names[i],) for i in probabilities.argmax(axis=1)]
    _, cut = threshold_rule(space, thresholds, score_threshold)
    return [tuple(n for n, p, t in zip(names, row, cut) if p >= t) for row in probabilities]
