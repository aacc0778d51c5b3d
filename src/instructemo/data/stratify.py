"""Stratified splits of a dataset's rows: K folds for `cv`, one held-out test part for the webui's uploads.

Single-label rows are stratified by their label. Multi-label rows use
iterative stratification (Sechidis et al. 2011, the `iterative-stratification`
package), which keeps each label's share where plain stratification on label
combinations cannot: most combinations occur once, and a combination seen once
can only ever land on one side.
"""

from __future__ import annotations

import random
from collections import defaultdict

import numpy as np

from instructemo.data.datasets import Split
from instructemo.data.labels import binarize
from instructemo.errors import UserError


def fold_indices(split: Split, folds: int, seed: int) -> list[np.ndarray]:
    """The held-out row indices of each fold."""
    space = split.label_space
    if folds < 2:
        raise UserError(f"--folds {folds}: cross-validation needs at least 2 folds")
    if len(split.records) < folds:
        raise UserError(f"--folds {folds} is more than the {len(split.records)} training rows; use fewer folds")
    rows = np.zeros(len(split.records))
    if space.multi_label:
        from iterstrat.ml_stratifiers import MultilabelStratifiedKFold

        splitter = MultilabelStratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
        target = binarize([r.labels for r in split.records], space)
    else:
        from sklearn.model_selection import StratifiedKFold

        target = np.array([r.labels[0] for r in split.records])
        names, counts = np.unique(target, return_counts=True)
        if counts.min() < folds:
            raise UserError(
                f"label {str(names[counts.argmin()])!r} has {counts.min()} row(s), fewer than --folds {folds}; "
                "use fewer folds or more data"
            )
        splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    return [held_out for _, held_out in splitter.split(rows, target)]


def held_out_indices(split: Split, fraction: float, seed: int) -> list[int]:
    """The row indices of a test part holding about `fraction` of the rows and of each label, seeded.

    Single-label: each label's rows are shuffled and the fraction of them (rounded) is held out; a label
    with one row keeps it for training. Multi-label: iterative stratification over the labels.
    """
    if not 0 < fraction < 1:
        raise UserError(f"test fraction {fraction} must lie between 0 and 1 (e.g. 0.2 for a fifth)")
    records = split.records
    if split.label_space.multi_label:
        if len(records) < 2:
            return []
        from iterstrat.ml_stratifiers import MultilabelStratifiedShuffleSplit

        splitter = MultilabelStratifiedShuffleSplit(n_splits=1, test_size=fraction, random_state=seed)
        _, test = next(splitter.split(np.zeros(len(records)), binarize([r.labels for r in records], split.label_space)))
        return sorted(int(i) for i in test)
    by_label: dict[str, list[int]] = defaultdict(list)
    for i, record in enumerate(records):
        by_label[record.labels[0]].append(i)
    rng, test = random.Random(seed), []
    for label in sorted(by_label):
        rows = by_label[label]
        rng.shuffle(rows)
        test += rows[: round(len(rows) * fraction) if len(rows) > 1 else 0]
    return sorted(test)
