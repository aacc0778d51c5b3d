"""Datasets: the registry, a split's validated rows, and what a user's file holds.

`load_split` reads `name[:split]` (a registry dataset, from its files or the
hub) or a file path through `readers`, checks every row against the label
space before any model is loaded, and says where each bad row is.
"""

from __future__ import annotations

import difflib
import logging
from collections import Counter
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from instructemo.data.exclusions import Exclusions, row_id
from instructemo.data.labels import LabelSpace
from instructemo.data.readers import (
    ID_COLUMN_GUESSES,
    LABEL_COLUMN_GUESSES,
    READERS,
    TEXT_COLUMN_GUESSES,
    columns_of,
    find_file,
    has_header_line,
    pick_column,
    read_hub,
    read_rows,
    shared_data_dir,
)
from instructemo.data.records import (
    PATH_FORMATS,
    BadRow,
    DatasetEntry,
    RawRow,
    Record,
    cell_parts,
    is_integer,
    labels_of,
)
from instructemo.errors import UserError, shown
from instructemo.run.fileio import read_yaml_file

log = logging.getLogger(__name__)

# The top-level data/datasets.yaml of the checkout, shipped in the package (pyproject.toml maps it there).
REGISTRY_FILE = Path(str(resources.files("instructemo.registry"))) / "datasets.yaml"
EVAL_SPLIT_PREFERENCE = ("test", "dev", "validation", "val")
DEV_SPLIT_PREFERENCE = ("dev", "validation", "val")
# An inferred label with this few rows, beside one with 50 times as many, is taken for a typo.
RARE_LABEL_ROWS = 2
RARE_LABEL_RATIO = 50
# ... or, whatever the file's size, beside a label it is one typo away from (difflib ratio) with 10 times as many.
NEAR_LABEL_SIMILARITY = 0.8
NEAR_LABEL_RATIO = 10
# More labels than this, most of them with a single row, is a column of ids or texts rather than classes.
MANY_LABELS = 50
# A fix that declares the label space lists this many names in full (GoEmotions' 28 fit).
LABELS_IN_A_HINT = 30


def spec_options(cfg) -> dict[str, Any]:
    """The config keys that say how a dataset spec is read: columns and declared labels of a path dataset."""
    return {"text_column": cfg.text_column, "label_column": cfg.label_column, "labels": cfg.labels}


def reader_options(cfg) -> dict[str, Any]:
    """spec_options plus what to do with bad rows: what every split of a run is loaded with."""
    return {**spec_options(cfg), "on_bad_rows": cfg.on_bad_rows}


def run_spec(cfg, role: str) -> str:
    """The dataset spec a run uses for `role`: train (dataset), eval (eval_dataset, else the dataset's test split)
    or dev (select_dataset, else its dev split), which selection and calibration tune on."""
    if role == "train":
        return cfg.dataset
    if role == "eval":
        return cfg.eval_dataset or default_eval_spec(cfg.dataset, cfg.dataset_dir, **spec_options(cfg))
    if role == "dev":
        return cfg.select_dataset or default_dev_spec(cfg.dataset, cfg.dataset_dir, **spec_options(cfg))
    raise ValueError(f"unknown split role {role!r}")


def load_run_split(cfg, role: str, *, label_space: LabelSpace | None = None, max_samples: int | None = None) -> Split:
    """The rows of a run's split for `role` (see run_spec), read with the run's columns, labels and on_bad_rows."""
    default_split = {"train": "train", "eval": "test", "dev": "dev"}[role]
    return load_split(
        run_spec(cfg, role),
        cfg.dataset_dir,
        default_split=default_split,
        label_space=label_space,
        max_samples=max_samples,
        **reader_options(cfg),
    )


def load_registry(dataset_dir: str | Path) -> dict[str, DatasetEntry]:
    """The project's registry, overlaid by a datasets.yaml in dataset_dir when there is one."""
    entries = _read_registry(REGISTRY_FILE)
    user_file = Path(dataset_dir) / "datasets.yaml"
    if user_file.is_file() and user_file.resolve() != REGISTRY_FILE.resolve():
        entries.update(_read_registry(user_file))
    return entries


def _read_registry(path: Path) -> dict[str, DatasetEntry]:
    raw = read_yaml_file(path, "registry") or {}
    if not isinstance(raw, dict):
        raise UserError(f"registry {path} must map dataset names to entries")
    return {str(name): DatasetEntry.from_dict(str(name), spec or {}, str(path)) for name, spec in raw.items()}


@dataclass
class Split:
    """The rows of one split plus where they came from, and the bad rows skipped (on_bad_rows: skip)."""

    name: str
    records: list[Record]
    label_space: LabelSpace
    template: str
    origin: str
    skipped: list[BadRow] = field(default_factory=list)
    # (first source, later source) of texts that appear again with other labels.
    conflicts: list[tuple[str, str]] = field(default_factory=list)
    file: str | None = None  # the local file read, in full (None: a hub dataset); a fold keeps its whole file's
    exclusions: Path | None = None  # the reviewed list of rows left out (exclude_ids), in full
    excluded: int = 0  # how many rows it left out


def split_source(split: Split) -> dict[str, str]:
    """Where a split's rows come from (file or hub id, and split name): recorded by selection and calibration,
    so an evaluation on the same rows can say it is not held out."""
    return {"origin": split.origin, "split": split.name}


def resolve_label_space(
    spec: str, dataset_dir: str | Path, text_column=None, label_column=None, labels=None
) -> tuple[LabelSpace, str]:
    """The label space and default template of a dataset spec, without reading a registry dataset's rows."""
    entry, _ = entry_for(spec, dataset_dir, text_column, label_column, labels, default_split="train")
    return entry.label_space, entry.template


def load_split(
    spec: str,
    dataset_dir: str | Path,
    *,
    default_split: str = "train",
    max_samples: int | None = None,
    text_column: str | None = None,
    label_column: str | None = None,
    labels: list[str] | None = None,
    label_space: LabelSpace | None = None,
    on_bad_rows: str = "error",
) -> Split:
    """Read `name[:split]` or a file path into validated records.

    With `label_space` given, the rows are checked against it instead of the
    dataset's own (so evaluation uses the labels the model was trained on).
    Bad rows (empty text, a missing or unknown label, wrong number of columns,
    invalid UTF-8, a repeated id) stop the run with their count and lines, or
    with on_bad_rows="skip" are left out and reported. Texts that appear again
    with other labels are reported.
    """
    entry, split = entry_for(spec, dataset_dir, text_column, label_column, labels, default_split, label_space)
    space = label_space or entry.label_space
    split_spec = entry.splits[split]
    path = find_file(split_spec["file"], dataset_dir)
    if path is not None:
        rows = read_rows(entry, split_spec, path, dataset_dir)
        origin = str(path.resolve())  # in full: a run records it, and may be read from another folder
    elif entry.hub:
        rows = read_hub(entry, split)
        origin = f"hub:{entry.hub['id']}"
    else:
        raise UserError(
            f"dataset {entry.name!r} split {split!r}: file {split_spec['file']} not found in "
            f"{Path(dataset_dir).resolve()} or {shared_data_dir()}; put it there or set dataset_dir"
        )
    what = f"dataset {entry.name!r} split {split!r}"
    exclusions = _exclusions(entry, split, dataset_dir)
    records, bad, seen_ids, excluded = [], [], set(), 0
    first_seen: dict[str, str] = {}
    truncated = False
    for row in rows:
        if isinstance(row, Record) and exclusions is not None:
            seen_ids.add(row_id(row))
            if not exclusions.keeps(row):
                excluded += 1
                continue
        if not isinstance(row, BadRow):
            row = _check_row(row, space, first_seen)
        if isinstance(row, BadRow):
            bad.append(row)
            continue
        records.append(row)
        if max_samples is not None and len(records) >= max_samples:
            truncated = True
            break
    if bad:
        _report_bad_rows(bad, what, on_bad_rows)
    if exclusions is not None:
        if not truncated:
            exclusions.check_all_found(seen_ids, f"{what} ({origin})")
        origin = f"{origin}, less {excluded} rows listed in {exclusions.file}"
        log.info("%s: left out %d rows listed in the exclusion list %s", what, excluded, exclusions.file)
    if not records:
        raise UserError(f"{what} ({origin}) has no usable rows; check the file and any filter")
    conflicts = _conflicting_duplicates(records)
    if conflicts:
        first, later = conflicts[0]
        log.warning(
            "%s: %d text(s) appear again with other labels (first: %s and %s); check which label is right",
            what,
            len(conflicts),
            first,
            later,
        )
    file = str(path.resolve()) if path is not None else None
    return Split(
        split,
        records,
        space,
        entry.template,
        origin,
        bad,
        conflicts,
        file,
        exclusions.file if exclusions else None,
        excluded,
    )


def _exclusions(entry: DatasetEntry, split: str, dataset_dir) -> Exclusions | None:
    if entry.exclude_ids is None:
        return None
    path = find_file(entry.exclude_ids, dataset_dir)
    if path is None:
        raise UserError(
            f"dataset {entry.name!r}: exclusion list {entry.exclude_ids} (exclude_ids) not found in "
            f"{Path(dataset_dir).resolve()} or {shared_data_dir()}; put it there or fix the path"
        )
    return Exclusions.read(path.resolve(), split)


def default_eval_spec(
    train_spec: str, dataset_dir: str | Path, text_column=None, label_column=None, labels=None
) -> str:
    """The evaluation split paired with a training spec: its test split, else dev/validation."""
    if is_path_spec(train_spec):
        raise UserError("set eval_dataset: a file dataset has no test split to evaluate on by default")
    entry, _ = entry_for(train_spec, dataset_dir, text_column, label_column, labels, "train")
    for split in EVAL_SPLIT_PREFERENCE:
        if split in entry.splits:
            return f"{entry.name}:{split}"
    raise UserError(f"dataset {entry.name!r} has no test or dev split; set eval_dataset to name:split")


def default_dev_spec(train_spec: str, dataset_dir: str | Path, text_column=None, label_column=None, labels=None) -> str:
    """The split used to choose checkpoints and thresholds: the dataset's dev/validation split."""
    if is_path_spec(train_spec):
        raise UserError("set select_dataset: a file dataset has no dev split to choose on by default")
    entry, _ = entry_for(train_spec, dataset_dir, text_column, label_column, labels, "train")
    for split in DEV_SPLIT_PREFERENCE:
        if split in entry.splits:
            return f"{entry.name}:{split}"
    raise UserError(
        f"dataset {entry.name!r} has no dev or validation split; set select_dataset to a name:split or file"
    )


# --- resolving a spec ----------------------------------------------------------


def is_path_spec(spec: str) -> bool:
    return Path(spec).suffix.lower() in (*PATH_FORMATS, ".txt")


def entry_for(
    spec: str, dataset_dir, text_column, label_column, labels, default_split: str, space: LabelSpace | None = None
) -> tuple[DatasetEntry, str]:
    """The dataset entry and split a spec names; `space`, the label space a path file is read with (a trained model's)."""
    if is_path_spec(spec):
        return _path_entry(locate_path(spec, dataset_dir), text_column, label_column, labels, space), "data"
    name, _, split = spec.partition(":")
    registry = load_registry(dataset_dir)
    if name not in registry:
        hint = difflib.get_close_matches(name, registry, n=1)
        fix = f"did you mean {hint[0]!r}?" if hint else f"known: {', '.join(sorted(registry))}"
        raise UserError(f"unknown dataset {name!r}: not in the registry and not a .csv/.tsv/.jsonl/.txt path; {fix}")
    if labels is not None:
        raise UserError(
            f"labels: declares the label space of a dataset given by path; registry dataset {name!r} "
            "declares its own in datasets.yaml, so remove labels from the config"
        )
    entry = registry[name]
    split = split or default_split
    if split not in entry.splits:
        raise UserError(f"dataset {name!r} has no split {split!r}; it has {', '.join(entry.splits)}")
    return entry, split


def locate_path(spec: str, dataset_dir: str | Path) -> Path:
    """A dataset path as given: absolute, else from the current directory, else from dataset_dir."""
    path = Path(spec).expanduser()
    tried = [path] if path.is_absolute() else [Path.cwd() / path, Path(dataset_dir).expanduser().resolve() / path]
    for candidate in tried:
        if candidate.is_file():
            return candidate
    places = " or ".join(str(t) for t in dict.fromkeys(tried))
    raise UserError(f"dataset file {spec} not found (looked for {places}); check the path")


def _path_entry(
    path: Path,
    text_column: str | None,
    label_column: str | None,
    labels: list[str] | None,
    space: LabelSpace | None = None,
) -> DatasetEntry:
    """A one-split entry for a user's file: columns inferred; the label space given (`space`), declared
    (`labels`) or read off the file.

    Multi-label when a row names several labels (a JSON list, or a cell split by
    the separator), never because a cell is empty.
    """
    fmt = PATH_FORMATS.get(path.suffix.lower(), "semicolon")
    entry = DatasetEntry(
        name=f"path:{path}",
        format=fmt,
        splits={"data": {"file": str(path)}},
        label_space=LabelSpace(("?",)),
        header=has_header_line(path) if fmt == "semicolon" else True,
        from_path=True,
    )
    if fmt != "semicolon":
        columns = columns_of(entry, path)
        entry.text_column = pick_column(path, columns, text_column, TEXT_COLUMN_GUESSES, "text")
        entry.label_column = pick_column(path, columns, label_column, LABEL_COLUMN_GUESSES, "label")
        entry.id_column = next((c for c in ID_COLUMN_GUESSES if c in columns), None)
    raw = [row for row in READERS[fmt](entry, entry.splits["data"], path, path.parent) if isinstance(row, RawRow)]
    if labels is not None:
        entry.index_labels = not any(map(is_integer, labels)) and any(
            is_integer(str(v).strip()) for r in raw for v in (r.label if isinstance(r.label, list) else [r.label])
        )
    if space is not None:
        entry.label_space, entry.template = space, "multi_label" if space.multi_label else "single_label"
        return entry
    multi = any(
        isinstance(r.label, list) or (isinstance(r.label, str) and len(cell_parts(r.label, entry)) > 1) for r in raw
    )
    if labels is not None:
        entry.label_space = LabelSpace(tuple(labels), multi_label=multi)
    else:
        entry.label_space = LabelSpace(("?",), multi_label=multi)
        found: Counter[str] = Counter()
        first: dict[str, str] = {}
        for row in raw:
            names = labels_of(row.label, entry)
            if isinstance(names, str):
                continue  # a bad row, reported with its line when the split loads
            found.update(names)
            for name in names:
                first.setdefault(name, row.source)
        if not found:
            raise UserError(f"dataset file {path} has no labelled rows; check label_column")
        entry.label_space = LabelSpace(_inferred_names(path, found, first), multi_label=multi)
        log.info(
            "labels read off %s (%s): %s",
            path.name,
            "multi-label" if multi else "single-label",
            shown(f"{n} {found[n]}" for n in sorted(found, key=lambda n: -found[n])),
        )
    entry.template = "multi_label" if multi else "single_label"
    return entry


def _inferred_names(path: Path, found: Counter, first: dict[str, str]) -> tuple[str, ...]:
    """The label names found in a file, sorted; labels that look like mistakes stop the run."""
    integers = sorted((n for n in found if is_integer(n)), key=int)
    names = sorted(n for n in found if not is_integer(n))
    if integers and names:
        raise UserError(
            f"{path}: the labels mix integers ({', '.join(integers[:6])}) and names ({', '.join(names[:6])}); "
            f"use one kind, or declare the names in index order, e.g. labels: [{shown(names, LABELS_IN_A_HINT)}]"
        )
    if integers:
        log.warning(
            "%s: the labels are the integers %s, so the model learns to answer with numbers; to train on "
            "names, declare them in index order: labels: [name of 0, name of 1, ...]",
            path.name,
            shown(integers),
        )
        return tuple(integers)
    variants: dict[str, list[str]] = {}
    for name in names:
        variants.setdefault(" ".join(name.split()).casefold(), []).append(name)
    groups = [sorted(group, key=lambda n: -found[n]) for group in variants.values()]
    clashes = [group for group in groups if len(group) > 1]
    keep = sorted(group[0] for group in groups)  # the most frequent spelling of each
    if clashes:
        clashing = "; ".join(
            " vs ".join(f"{n!r} ({found[n]} row(s), first {first[n]})" for n in group) for group in clashes[:3]
        )
        raise UserError(
            f"{path}: labels differ only in case or spaces: {clashing}; make them one in the file, or declare "
            f"the label space (other spellings become bad rows): labels: [{shown(keep, LABELS_IN_A_HINT)}]"
        )
    booleans = [n for n in names if n.casefold() in ("true", "false")]
    if booleans and len(booleans) < len(names):
        raise UserError(
            f"{path}: the labels mix {booleans[0]!r} (first {first[booleans[0]]}) with names such as "
            f"{next(n for n in names if n not in booleans)!r}: a spreadsheet's boolean, not a class; fix those rows, "
            f"or declare the label space (other labels become bad rows): labels: [{shown([n for n in names if n not in booleans], LABELS_IN_A_HINT)}]"
        )
    most = max(found.values())
    rare = [
        n for n in names if found[n] <= RARE_LABEL_ROWS and (most >= RARE_LABEL_RATIO * found[n] or _near(n, found))
    ]
    if rare:
        common = [n for n in names if n not in rare]
        typos = "; ".join(f"{n!r} has {found[n]} row(s), first {first[n]}{_did_you_mean(n, common)}" for n in rare[:3])
        raise UserError(
            f"{path}: labels too rare to be real classes beside {most} rows of the most common: {typos}; fix "
            f"those rows, or declare the label space (other labels become bad rows): labels: [{shown(common, LABELS_IN_A_HINT)}]"
        )
    singles = [n for n in names if found[n] == 1]
    if len(names) > MANY_LABELS and len(singles) > len(names) / 2:
        raise UserError(
            f"{path}: {len(singles):,} of its {len(names):,} labels have a single row ({shown(singles, 3)}): that "
            "column holds ids or texts, not classes; set label_column to the column of classes, or declare the "
            "label space (other labels become bad rows): labels: [...]"
        )
    return tuple(names)


def _near(name: str, found: Counter) -> bool:
    """Whether `name` is one slip away from a label with NEAR_LABEL_RATIO times its rows ('joyy' beside 'joy')."""
    return any(
        other != name
        and count >= NEAR_LABEL_RATIO * found[name]
        and difflib.SequenceMatcher(None, name.casefold(), other.casefold()).ratio() >= NEAR_LABEL_SIMILARITY
        for other, count in found.items()
    )


def _did_you_mean(name: str, names) -> str:
    close = difflib.get_close_matches(name, list(names), n=1, cutoff=0.6) or [
        n for n in names if n.casefold() == name.casefold()
    ]
    return f" (did you mean {close[0]!r}?)" if close else ""


# --- validation -------------------------------------------------------------------


def _check_row(record: Record, space: LabelSpace, first_seen: dict[str, str]) -> Record | BadRow:
    """The record, or why it cannot be used: labels outside the space, a label count, a repeated id."""
    unknown = [label for label in record.labels if label not in space.names]
    if unknown:
        hint = _did_you_mean(unknown[0], space.names)
        return BadRow(record.source, f"label(s) {unknown} outside the label space {list(space.names)}{hint}")
    if not space.multi_label and len(record.labels) != 1:
        return BadRow(record.source, f"{len(record.labels)} labels in a single-label dataset (need exactly one)")
    if record.id is not None:
        if record.id in first_seen:
            return BadRow(record.source, f"id {record.id!r} repeats the row at {first_seen[record.id]}")
        first_seen[record.id] = record.source
    return record


def _conflicting_duplicates(records: list[Record]) -> list[tuple[str, str]]:
    """(first source, later source) for each text that appears again with another set of labels."""
    first: dict[str, Record] = {}
    conflicts = []
    for record in records:
        seen = first.setdefault(" ".join(record.text.split()), record)
        if seen is not record and set(seen.labels) != set(record.labels):
            conflicts.append((seen.source, record.source))
    return conflicts


def _report_bad_rows(bad: list[BadRow], what: str, policy: str) -> None:
    first = "; ".join(f"{row.source}: {row.reason}" for row in bad[:3])
    if policy == "skip":
        log.warning("%s: skipped %d bad row(s), first: %s", what, len(bad), first)
        return
    raise UserError(
        f"{what}: {len(bad)} bad row(s), first: {first}; fix them, or set on_bad_rows: skip to leave them out"
    )
