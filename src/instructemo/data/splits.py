"""Split identity: which rows a spec names, so one split is never used for two jobs.

`emotion:test`, the test file's path and a relative path to it are one
split; IMDB's train and test, two filters of one file, are two. sft, tune,
few-shot prompting and evaluation ask here before they read a row.
"""

from __future__ import annotations

import json
from pathlib import Path

from instructemo.data.datasets import entry_for, is_path_spec, locate_path, spec_options
from instructemo.data.readers import find_file


def split_location(
    spec: str, dataset_dir: str | Path, default_split: str, text_column=None, label_column=None, labels=None
) -> str:
    """Where a spec's rows live, found without reading them: the file's resolved path (with the registry's row
    filter, when a split is part of a file), else the hub id and split.

    Two specs with one location are one split, however they are written
    (`emotion:test`, the test file's path, a relative path); two splits that
    filter one file (IMDB's `is_valid`) are two.
    """
    if is_path_spec(spec):
        return str(locate_path(spec, dataset_dir).resolve())
    entry, split = entry_for(spec, dataset_dir, text_column, label_column, labels, default_split)
    split_spec = entry.splits[split]
    path = find_file(split_spec["file"], dataset_dir)
    if path is None:
        return f"hub:{entry.hub['id']}:{split}" if entry.hub else f"{entry.name}:{split}"
    where = split_spec.get("where")
    return str(path.resolve()) + (f" where {json.dumps(where, sort_keys=True)}" if where else "")


def training_location(cfg) -> str:
    """Where the run's training rows (cfg.dataset) live, as split_location says it."""
    return split_location(cfg.dataset, cfg.dataset_dir, "train", **spec_options(cfg))


def is_training_split(cfg, spec: str, default_split: str) -> bool:
    """Whether `spec` names the run's training rows, however it is written."""
    return split_location(spec, cfg.dataset_dir, default_split, **spec_options(cfg)) == training_location(cfg)


def held_out_locations(cfg) -> dict[str, str]:
    """The held-out test rows a run is finally judged on: location -> the spec that names them.

    The dataset's own test split (a registry dataset with one) and eval_dataset when it is set.
    """
    options = spec_options(cfg)
    found = {}
    if cfg.eval_dataset:
        found[split_location(cfg.eval_dataset, cfg.dataset_dir, "test", **options)] = cfg.eval_dataset
    if not is_path_spec(cfg.dataset):
        entry, _ = entry_for(cfg.dataset, cfg.dataset_dir, **options, default_split="train")
        if "test" in entry.splits:
            spec = f"{entry.name}:test"
            found.setdefault(split_location(spec, cfg.dataset_dir, "test", **options), spec)
    return found
