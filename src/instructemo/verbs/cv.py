"""`instructemo cv CONFIG.yaml --folds K`: K-fold cross-validation of the whole recipe.

The training rows are split into K folds, stratified so every fold has about
the same share of each label: scikit-learn's StratifiedKFold for single-label
data, iterative stratification (Sechidis et al. 2011, the
`iterative-stratification` package) for multi-label data, where plain
stratification cannot see label combinations. Each fold trains on the other
K-1 folds into output_dir/cv/fold-k and is evaluated on its held-out rows; the
summary gives every metric's mean and standard deviation over the folds. The
fold loop itself (train/folds.py) is shared with `audit`, which reads each
row's out-of-fold probabilities from the same folder.
"""

from __future__ import annotations

from instructemo.config.schema import Config
from instructemo.data.datasets import load_run_split
from instructemo.train.folds import cross_validate, summary_markdown


def run_cv(cfg: Config, folds: int) -> dict:
    data = load_run_split(cfg, "train", max_samples=cfg.max_samples)
    summary = cross_validate(cfg, data, folds)[1]
    print(summary_markdown(summary))
    return summary
