"""Multi-label score mode: a probability for every label, read off the model's own answer.

A multi-label answer names labels in canonical order ("anger, disgust,
sadness") or the none word. The probability of label k is the chance that the
model names k next, given the prompt and the labels its greedy answer names
before k, normalised over everything that may come next at that point (any
later label, or the end of the answer). So `disgust` after `anger` is judged
where the model would actually write it, not as the answer's opening word.

Work: one greedy generation per row, then one scoring pass per distinct
prefix of that answer (a row with two labels has three: none, the first, both),
each scoring every possible next label at once (see hf.score_continuations).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from instructemo.data.labels import LabelSpace
from instructemo.models.chat import answer_tokens, prompt_token_ids, stop_token_ids
from instructemo.prompts.parse import parse_labels


def label_probabilities(engine, conversations: list[list[dict]], space: LabelSpace) -> tuple[np.ndarray, list[str]]:
    """(rows x labels probabilities, the greedy answers)."""
    tokenizer = engine.tokenizer
    answers = engine.generate(conversations)
    greedy = [space.canonical(parse_labels(a, space) or ()) for a in answers]
    prompt_ids = prompt_token_ids(tokenizer, conversations)
    names, index = space.names, {n: i for i, n in enumerate(space.names)}
    stops = set(stop_token_ids(tokenizer))

    @lru_cache(maxsize=None)
    def candidates(prefix: tuple[str, ...]) -> tuple[tuple[int, ...], tuple[tuple[int, ...], ...]]:
        """The answer tokens every candidate shares after `prefix`, and each candidate's own tokens.

        Candidates: each label's name appended (without what follows it), then the end of the answer.
        """
        full = []
        for name in names:
            ids = answer_tokens(tokenizer, conversations[0], space.answer(prefix + (name,)))
            full.append(ids[:-1] if ids and ids[-1] in stops else ids)  # the label, not the end of the answer
        full.append(answer_tokens(tokenizer, conversations[0], space.answer(prefix)))
        shared = 0
        while all(len(f) > shared + 1 and f[shared] == full[0][shared] for f in full):
            shared += 1
        return tuple(full[0][:shared]), tuple(tuple(f[shared:]) for f in full)

    # One unit per (row, prefix of its greedy labels); units that share candidate tokens are scored together.
    units: list[tuple[int, tuple[str, ...]]] = [
        (row, labels[:j]) for row, labels in enumerate(greedy) for j in range(len(labels) + 1)
    ]
    groups: dict[tuple, list[int]] = {}
    for u, (_, prefix) in enumerate(units):
        groups.setdefault(candidates(prefix)[1], []).append(u)
    unit_probs = np.zeros((len(units), len(names) + 1))
    for continuations, members in groups.items():
        contexts = [prompt_ids[units[u][0]] + list(candidates(units[u][1])[0]) for u in members]
        loglik = np.asarray(engine.score_tokens(contexts, [list(c) for c in continuations]), dtype=np.float64)
        for u, row in zip(members, loglik):
            prefix = units[u][1]
            last = index[prefix[-1]] if prefix else -1
            row[: last + 1] = -np.inf  # canonical order: only later labels can come next
            with np.errstate(invalid="ignore"):  # NaN scores are refused by the caller
                unit_probs[u] = np.exp(row - row.max())
                unit_probs[u] /= unit_probs[u].sum()

    probabilities = np.zeros((len(conversations), len(names)))
    unit_of = {(row, len(prefix)): u for u, (row, prefix) in enumerate(units)}
    for row, labels in enumerate(greedy):
        positions = [index[label] for label in labels]
        for k in range(len(names)):
            before = sum(p < k for p in positions)
            probabilities[row, k] = unit_probs[unit_of[(row, before)], k]
    return probabilities, answers
