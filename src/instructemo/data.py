"""Datasets: the registry, file readers for each format, and the hub fallback.

Every reader yields rows that remember their file and line, so a bad row is
reported where the user can find it. Rows are validated against the label
space before any model is loaded.
"""

from __future__ import annotations

import codecs
import csv
import difflib
import io
import json
import logging
import math
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from .config import read_yaml_file
from .errors import UserError
from .labels import LabelSpace

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parents[2]
REGISTRY_FILE = PROJECT_ROOT / "data" / "datasets.yaml"
FORMATS = ("semicolon", "csv", "tsv", "tsv_binary", "tsv_ids", "jsonl")
PATH_FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl"}
TEXT_COLUMN_GUESSES = ("text", "sentence", "tweet", "Tweet", "review", "content", "comment")
LABEL_COLUMN_GUESSES = ("label", "labels", "emotion", "emotions", "sentiment", "label_name", "class")
ID_COLUMN_GUESSES = ("id", "ID", "Id", "example_id", "row_id")
EVAL_SPLIT_PREFERENCE = ("test", "dev", "validation", "val")
DEV_SPLIT_PREFERENCE = ("dev", "validation", "val")
# Label cells that mean "no value" in the files spreadsheets, pandas and databases export.
MISSING_LABELS = frozenset({"nan", "-nan", "null", "none", "na", "n/a", "#n/a", "<na>", "nil", "undefined"})
# An inferred label with this few rows, beside one with 50 times as many, is taken for a typo.
RARE_LABEL_ROWS = 2
RARE_LABEL_RATIO = 50

# Texts longer than the csv module's default field limit (128 KiB), such as whole reviews, are ordinary data.
csv.field_size_limit(2**31 - 1)


def spec_options(cfg) -> dict[str, Any]:
    """The config keys that say how a dataset spec is read: columns and declared labels of a path dataset."""
    return {"text_column": cfg.text_column, "label_column": cfg.label_column, "labels": cfg.labels}


def reader_options(cfg) -> dict[str, Any]:
    """spec_options plus what to do with bad rows: what every split of a run is loaded with."""
    return {**spec_options(cfg), "on_bad_rows": cfg.on_bad_rows}


def shared_data_dir() -> Path:
    """The team's shared datasets folder (../shared/data beside the checkout)."""
    return Path(os.environ.get("INSTRUCTEMO_SHARED_DATA", PROJECT_ROOT.parent / "shared" / "data"))


@dataclass(frozen=True)
class Record:
    """One labelled example. `source` is 'file:line' (or 'hub:split:index')."""

    text: str
    labels: tuple[str, ...]
    id: str | None
    source: str


@dataclass(frozen=True)
class RawRow:
    """A row as read, before its label is interpreted: a CSV/TSV/TXT label cell (str) or a JSON value."""

    text: str
    label: Any
    id: str | None
    source: str


@dataclass(frozen=True)
class BadRow:
    """A row that cannot be used, and why. `source` is 'file:line'."""

    source: str
    reason: str


@dataclass
class DatasetEntry:
    """A registry entry: files per split, their format and the label space."""

    name: str
    format: str
    splits: dict[str, dict[str, Any]]
    label_space: LabelSpace
    template: str = "auto"
    text_column: str = "text"
    label_column: str = "label"
    id_column: str | None = None
    header: bool = True
    label_separator: str = ","
    names_file: str | None = None
    hub: dict[str, Any] | None = None
    description: str = ""
    # A dataset given by path, not in a registry: an empty label cell is a missing label, never "no labels".
    from_path: bool = False
    index_labels: bool = False  # integer labels index label_space.names (declared with `labels:`)

    @classmethod
    def from_dict(cls, name: str, data: dict[str, Any], where: str) -> "DatasetEntry":
        data = dict(data)
        fmt = data.pop("format", None)
        if fmt not in FORMATS:
            raise UserError(f"{where}: dataset {name!r} has format {fmt!r}; use one of {', '.join(FORMATS)}")
        splits = {}
        for split, spec in (data.pop("splits", None) or {}).items():
            spec = {"file": spec} if isinstance(spec, str) else dict(spec)
            if "file" not in spec:
                raise UserError(f"{where}: split {split!r} of dataset {name!r} needs a 'file'")
            splits[str(split)] = spec
        if not splits:
            raise UserError(f"{where}: dataset {name!r} needs a 'splits' mapping such as {{train: train.csv}}")
        label_space = LabelSpace.from_dict(data.pop("labels", None) or {}, f"{where}: dataset {name!r}")
        known = {f for f in cls.__dataclass_fields__} - {"name", "format", "splits", "label_space", "from_path", "index_labels"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UserError(f"{where}: dataset {name!r} has unknown keys {unknown}; known: {sorted(known)}")
        return cls(name=name, format=fmt, splits=splits, label_space=label_space, **data)


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


def split_source(split: Split) -> dict[str, str]:
    """Where a split's rows come from (file or hub id, and split name): recorded by selection and calibration,
    so an evaluation on the same rows can say it is not held out."""
    return {"origin": split.origin, "split": split.name}


def resolve_label_space(spec: str, dataset_dir: str | Path, text_column=None, label_column=None,
                        labels=None) -> tuple[LabelSpace, str]:
    """The label space and default template of a dataset spec, without reading a registry dataset's rows."""
    entry, _ = _entry_for(spec, dataset_dir, text_column, label_column, labels, default_split="train")
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
    entry, split = _entry_for(spec, dataset_dir, text_column, label_column, labels, default_split, label_space)
    space = label_space or entry.label_space
    split_spec = entry.splits[split]
    path = find_file(split_spec["file"], dataset_dir)
    if path is not None:
        rows = _read_rows(entry, split_spec, path, dataset_dir)
        origin = str(path)
    elif entry.hub:
        rows = _read_hub(entry, split)
        origin = f"hub:{entry.hub['id']}"
    else:
        raise UserError(
            f"dataset {entry.name!r} split {split!r}: file {split_spec['file']} not found in "
            f"{Path(dataset_dir).resolve()} or {shared_data_dir()}; put it there or set dataset_dir"
        )
    what = f"dataset {entry.name!r} split {split!r}"
    records, bad = [], []
    first_seen: dict[str, str] = {}
    for row in rows:
        if not isinstance(row, BadRow):
            row = _check_row(row, space, first_seen)
        if isinstance(row, BadRow):
            bad.append(row)
            continue
        records.append(row)
        if max_samples is not None and len(records) >= max_samples:
            break
    if bad:
        _report_bad_rows(bad, what, on_bad_rows)
    if not records:
        raise UserError(f"{what} ({origin}) has no usable rows; check the file and any filter")
    conflicts = _conflicting_duplicates(records)
    if conflicts:
        first, later = conflicts[0]
        log.warning("%s: %d text(s) appear again with other labels (first: %s and %s); check which label is right",
                    what, len(conflicts), first, later)
    return Split(split, records, space, entry.template, origin, bad, conflicts)


def default_eval_spec(train_spec: str, dataset_dir: str | Path, text_column=None, label_column=None, labels=None) -> str:
    """The evaluation split paired with a training spec: its test split, else dev/validation."""
    if _is_path_spec(train_spec):
        raise UserError("set eval_dataset: a file dataset has no test split to evaluate on by default")
    entry, _ = _entry_for(train_spec, dataset_dir, text_column, label_column, labels, "train")
    for split in EVAL_SPLIT_PREFERENCE:
        if split in entry.splits:
            return f"{entry.name}:{split}"
    raise UserError(f"dataset {entry.name!r} has no test or dev split; set eval_dataset to name:split")


def default_dev_spec(train_spec: str, dataset_dir: str | Path, text_column=None, label_column=None, labels=None) -> str:
    """The split used to choose checkpoints and thresholds: the dataset's dev/validation split."""
    if _is_path_spec(train_spec):
        raise UserError("set select_dataset: a file dataset has no dev split to choose on by default")
    entry, _ = _entry_for(train_spec, dataset_dir, text_column, label_column, labels, "train")
    for split in DEV_SPLIT_PREFERENCE:
        if split in entry.splits:
            return f"{entry.name}:{split}"
    raise UserError(f"dataset {entry.name!r} has no dev or validation split; set select_dataset to a name:split or file")


# --- resolving a spec ----------------------------------------------------------


def _is_path_spec(spec: str) -> bool:
    return Path(spec).suffix.lower() in (*PATH_FORMATS, ".txt")


def _entry_for(spec: str, dataset_dir, text_column, label_column, labels, default_split: str,
               space: LabelSpace | None = None) -> tuple[DatasetEntry, str]:
    """The dataset entry and split a spec names; `space`, the label space a path file is read with (a trained model's)."""
    if _is_path_spec(spec):
        return _path_entry(locate_path(spec, dataset_dir), text_column, label_column, labels, space), "data"
    name, _, split = spec.partition(":")
    registry = load_registry(dataset_dir)
    if name not in registry:
        hint = difflib.get_close_matches(name, registry, n=1)
        fix = f"did you mean {hint[0]!r}?" if hint else f"known: {', '.join(sorted(registry))}"
        raise UserError(f"unknown dataset {name!r}: not in the registry and not a .csv/.tsv/.jsonl/.txt path; {fix}")
    if labels is not None:
        raise UserError(f"labels: declares the label space of a dataset given by path; registry dataset {name!r} "
                        "declares its own in datasets.yaml, so remove labels from the config")
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


def _path_entry(path: Path, text_column: str | None, label_column: str | None, labels: list[str] | None,
                space: LabelSpace | None = None) -> DatasetEntry:
    """A one-split entry for a user's file: columns inferred; the label space given (`space`), declared
    (`labels`) or read off the file.

    Multi-label when a row names several labels (a JSON list, or a cell split by
    the separator), never because a cell is empty.
    """
    fmt = PATH_FORMATS.get(path.suffix.lower(), "semicolon")
    entry = DatasetEntry(
        name=f"path:{path}", format=fmt, splits={"data": {"file": str(path)}},
        label_space=LabelSpace(("?",)), header=_has_header_line(path) if fmt == "semicolon" else True, from_path=True,
    )
    if fmt != "semicolon":
        columns = _columns_of(entry, path)
        entry.text_column = pick_column(path, columns, text_column, TEXT_COLUMN_GUESSES, "text")
        entry.label_column = pick_column(path, columns, label_column, LABEL_COLUMN_GUESSES, "label")
        entry.id_column = next((c for c in ID_COLUMN_GUESSES if c in columns), None)
    raw = [row for row in _READERS[fmt](entry, entry.splits["data"], path, path.parent) if isinstance(row, RawRow)]
    if labels is not None:
        entry.index_labels = not any(map(_is_integer, labels)) and any(
            _is_integer(str(v).strip()) for r in raw for v in (r.label if isinstance(r.label, list) else [r.label]))
    if space is not None:
        entry.label_space, entry.template = space, "multi_label" if space.multi_label else "single_label"
        return entry
    multi = any(isinstance(r.label, list) or (isinstance(r.label, str) and len(_cell_parts(r.label, entry)) > 1) for r in raw)
    if labels is not None:
        entry.label_space = LabelSpace(tuple(labels), multi_label=multi)
    else:
        entry.label_space = LabelSpace(("?",), multi_label=multi)
        found: Counter[str] = Counter()
        first: dict[str, str] = {}
        for row in raw:
            names = _labels_of(row.label, entry)
            if isinstance(names, str):
                continue  # a bad row, reported with its line when the split loads
            found.update(names)
            for name in names:
                first.setdefault(name, row.source)
        if not found:
            raise UserError(f"dataset file {path} has no labelled rows; check label_column")
        entry.label_space = LabelSpace(_inferred_names(path, found, first), multi_label=multi)
        log.info("labels read off %s (%s): %s", path.name, "multi-label" if multi else "single-label",
                 ", ".join(f"{n} {found[n]}" for n in sorted(found, key=lambda n: -found[n])))
    entry.template = "multi_label" if multi else "single_label"
    return entry


def _inferred_names(path: Path, found: Counter, first: dict[str, str]) -> tuple[str, ...]:
    """The label names found in a file, sorted; labels that look like mistakes stop the run."""
    integers = sorted((n for n in found if _is_integer(n)), key=int)
    names = sorted(n for n in found if not _is_integer(n))
    if integers and names:
        raise UserError(f"{path}: the labels mix integers ({', '.join(integers[:6])}) and names ({', '.join(names[:6])}); "
                        f"use one kind, or declare the names in index order, e.g. labels: [{', '.join(names)}]")
    if integers:
        log.warning("%s: the labels are the integers %s, so the model learns to answer with numbers; to train on "
                    "names, declare them in index order: labels: [name of 0, name of 1, ...]", path.name, ", ".join(integers))
        return tuple(integers)
    variants: dict[str, list[str]] = {}
    for name in names:
        variants.setdefault(" ".join(name.split()).casefold(), []).append(name)
    groups = [sorted(group, key=lambda n: -found[n]) for group in variants.values()]
    clashes = [group for group in groups if len(group) > 1]
    keep = sorted(group[0] for group in groups)  # the most frequent spelling of each
    if clashes:
        shown = "; ".join(" vs ".join(f"{n!r} ({found[n]} row(s), first {first[n]})" for n in group) for group in clashes[:3])
        raise UserError(f"{path}: labels differ only in case or spaces: {shown}; make them one in the file, or declare "
                        f"the label space (other spellings become bad rows): labels: [{', '.join(keep)}]")
    most = max(found.values())
    rare = [n for n in names if found[n] <= RARE_LABEL_ROWS and most >= RARE_LABEL_RATIO * found[n]]
    if rare:
        common = [n for n in names if n not in rare]
        shown = "; ".join(f"{n!r} has {found[n]} row(s), first {first[n]}{_did_you_mean(n, common)}" for n in rare[:3])
        raise UserError(f"{path}: labels too rare to be real classes beside {most} rows of the most common: {shown}; fix "
                        f"those rows, or declare the label space (other labels become bad rows): labels: [{', '.join(common)}]")
    return tuple(names)


def _did_you_mean(name: str, names) -> str:
    close = difflib.get_close_matches(name, list(names), n=1, cutoff=0.6) or [
        n for n in names if n.casefold() == name.casefold()]
    return f" (did you mean {close[0]!r}?)" if close else ""


def _is_integer(name: str) -> bool:
    return re.fullmatch(r"-?\d+", name) is not None


def _has_header_line(path: Path) -> bool:
    """Whether a semicolon file's first line names its columns.

    Known column names (text;label, text;label_name, ...) make a header. So does
    any other first line whose label field appears on no other line: a label
    with a single row is a header's column name far more often than data
    ("message;feeling"), and training on it would invent a class. That
    reading is logged.
    """
    numbered = list(_lines(_decode_lines(path)[0]))
    first = numbered[0][1] if numbered else ""
    text, sep, label = first.strip().casefold().rpartition(";")
    if text in {g.casefold() for g in TEXT_COLUMN_GUESSES} and label in {g.casefold() for g in LABEL_COLUMN_GUESSES}:
        return True
    others = {line.rpartition(";")[2].strip().casefold() for _, line in numbered[1:]}
    if sep and len(numbered) > 1 and label.strip() not in others:
        log.warning("%s: line 1 %r read as the header (its label %r is on no other line); name the columns "
                    "text;label to say so", path, first.strip()[:80], label.strip())
        return True
    return False


def _columns_of(entry: DatasetEntry, path: Path) -> list[str]:
    text = _decode_lines(path)[0]  # an undecodable row is reported, with its line, when the split loads
    if entry.format == "jsonl":
        for _, line in _lines(text):
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict):
                return list(row)
        return []
    if entry.format in ("csv", "tsv"):
        reader = csv.reader(io.StringIO(text, newline=""), delimiter="," if entry.format == "csv" else "\t")
        return next(reader, [])
    return []


def read_table(path: Path) -> tuple[list[str], list[tuple[int, dict[str, Any]]]]:
    """Columns and (line, row) pairs of an unlabelled CSV, TSV or JSONL file."""
    fmt = PATH_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise UserError(f"{path}: unsupported file type {path.suffix!r}; use .csv, .tsv or .jsonl")
    if not path.is_file():
        raise UserError(f"input file {path} not found; check the path")
    if fmt == "jsonl":
        rows = list(_json_objects(path))
        columns = list(dict.fromkeys(k for _, row in rows for k in row))
    else:
        reader = csv.DictReader(io.StringIO(_decode(path), newline=""), delimiter="," if fmt == "csv" else "\t")
        columns = list(reader.fieldnames or [])
        rows = []
        for row in reader:
            if None in row or any(v is None for v in row.values()):
                raise UserError(f"{path}:{reader.line_num}: expected {len(columns)} fields; check the quoting and delimiters")
            rows.append((reader.line_num, row))
    if not rows:
        raise UserError(f"input file {path} has no rows")
    return columns, rows


def pick_column(path: Path, columns: list[str], given: str | None, guesses, what: str) -> str:
    """The column the user named, or the first that looks like a text / label / id column."""
    if given is not None:
        if given not in columns:
            raise UserError(f"{path}: no {what} column {given!r}; the columns are {columns}")
        return given
    for guess in guesses:
        if guess in columns:
            return guess
    raise UserError(f"{path}: cannot tell which column holds the {what} (columns: {columns}); set {what}_column")


def find_file(relative: str, dataset_dir: str | Path) -> Path | None:
    candidate = Path(relative)
    if candidate.is_absolute():
        return candidate if candidate.is_file() else None
    for base in (Path(dataset_dir), shared_data_dir()):
        if (base / candidate).is_file():
            return base / candidate
    return None


# --- readers ---------------------------------------------------------------------


def _decode(path: Path) -> str:
    """The whole file as text; invalid UTF-8 stops with its line."""
    text, bad_lines = _decode_lines(path)
    if bad_lines:
        raise UserError(f"{path}:{bad_lines[0]}: invalid UTF-8; re-save the file as UTF-8")
    return text


def _decode_lines(path: Path) -> tuple[str, list[int]]:
    """The file as text with lines that are not valid UTF-8 blanked out, and their numbers.

    A UTF-8 byte-order mark (Excel writes one) is dropped, and a file whose
    lines end in CR alone (old Mac exports) is read line by line too.
    """
    data = path.read_bytes()
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise UserError(f"{path} is UTF-16 text; save it as UTF-8 (in Excel: CSV UTF-8)")
    data = data.removeprefix(codecs.BOM_UTF8)
    if b"\n" not in data and b"\r" in data:
        data = data.replace(b"\r", b"\n")
    try:
        return data.decode("utf-8"), []
    except UnicodeDecodeError:
        pass
    lines, bad = [], []
    for number, raw in enumerate(data.split(b"\n"), start=1):
        try:
            lines.append(raw.decode("utf-8"))
        except UnicodeDecodeError:
            lines.append("")
            bad.append(number)
    return "\n".join(lines), bad


def _invalid_utf8(path: Path, bad_lines: list[int]) -> Iterator[BadRow]:
    for number in bad_lines:
        yield BadRow(f"{path}:{number}", "invalid UTF-8; re-save the file as UTF-8")


def _lines(text: str) -> Iterator[tuple[int, str]]:
    # split("\n"), not splitlines(): tweets hold U+2028 and other characters
    # that splitlines() would wrongly treat as line ends.
    for number, line in enumerate(text.split("\n"), start=1):
        line = line.rstrip("\r")
        if line.strip():
            yield number, line


def _read_rows(entry: DatasetEntry, split_spec: dict, path: Path, dataset_dir) -> Iterator[Record | BadRow]:
    for row in _READERS[entry.format](entry, split_spec, path, dataset_dir):
        if isinstance(row, RawRow):
            labels = _labels_of(row.label, entry)
            row = BadRow(row.source, labels) if isinstance(labels, str) else Record(row.text, labels, row.id, row.source)
        if isinstance(row, Record) and not row.text.strip():
            row = BadRow(row.source, "empty text")
        yield row


# --- label cells -------------------------------------------------------------------------


class _NoLabel(Exception):
    """Why a label value names no label."""


def _cell_parts(cell: str, entry: DatasetEntry) -> list[str]:
    return [part.strip() for part in cell.split(entry.label_separator) if part.strip()]


def _labels_of(value: Any, entry: DatasetEntry) -> tuple[str, ...] | str:
    """The label names in one label cell (CSV/TSV/TXT) or JSON value; a str instead says why there are none.

    An empty or missing-looking cell (NaN, null, None, true) is never a class.
    In a multi-label file the none word names the empty set; in a registry
    dataset that declares multi-label, so does an empty cell.
    """
    space = entry.label_space
    if isinstance(value, str):
        cell = value.strip()
        if space.multi_label and (cell.casefold() == space.none_word.casefold() or (not cell and not entry.from_path)):
            return ()
        if not cell:
            return "empty label" + (f"; write {space.none_word!r} for a row with no label" if space.multi_label else "")
        parts = _cell_parts(cell, entry)
    elif isinstance(value, list):
        parts = value
    else:
        parts = [value]
    try:
        return tuple(_label_name(part, entry) for part in parts)
    except _NoLabel as reason:
        return str(reason)


def _label_name(value: Any, entry: DatasetEntry) -> str:
    names = entry.label_space.names
    if value is None:
        raise _NoLabel("the label is null")
    if isinstance(value, bool):
        raise _NoLabel(f"the label is {str(value).lower()}, not a label name")
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _NoLabel(f"the label is {value}, not a label name")
        if not value.is_integer():
            raise _NoLabel(f"the label {value} is neither a name nor an index")
        value = int(value)
    if isinstance(value, int):
        value = str(value)
    if not isinstance(value, str):
        raise _NoLabel(f"the label must be a name, got a JSON {type(value).__name__}")
    name = value.strip()
    if not name:
        raise _NoLabel("empty label")
    if entry.index_labels and _is_integer(name):
        if not 0 <= int(name) < len(names):
            raise _NoLabel(f"label index {name} is outside labels (0..{len(names) - 1})")
        return names[int(name)]
    if name.casefold() in MISSING_LABELS and name not in names:
        raise _NoLabel(f"the label {name!r} looks like a missing value; fill it in (or, if it is a class, "
                       "declare it in labels:)")
    return name


# --- readers, one per format ------------------------------------------------------------


def _read_semicolon(entry: DatasetEntry, split_spec, path: Path, dataset_dir) -> Iterator[RawRow | BadRow]:
    text, bad_lines = _decode_lines(path)
    yield from _invalid_utf8(path, bad_lines)
    lines = _lines(text)
    if entry.header:
        next(lines, None)
    for number, line in lines:
        text, sep, label = line.rpartition(";")
        if not sep:
            yield BadRow(f"{path}:{number}", "expected 'text;label' but found no ';'")
            continue
        yield RawRow(text, label, None, f"{path}:{number}")


def _read_delimited(entry: DatasetEntry, split_spec, path: Path, dataset_dir) -> Iterator[RawRow | Record | BadRow]:
    delimiter = "," if entry.format == "csv" else "\t"
    text, bad_lines = _decode_lines(path)
    yield from _invalid_utf8(path, bad_lines)
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
    columns = reader.fieldnames or []
    needed = [entry.text_column] + (list(entry.label_space.names) if entry.format == "tsv_binary" else [entry.label_column])
    needed += [entry.id_column] if entry.id_column else []
    needed += list(split_spec.get("where", {}))
    missing = [c for c in needed if c not in columns]
    if missing:
        raise UserError(f"{path}: missing column(s) {missing}; the header has {columns}")
    where = {k: str(v) for k, v in split_spec.get("where", {}).items()}
    for row in reader:
        source = f"{path}:{reader.line_num}"
        if None in row or any(v is None for v in row.values()):
            yield BadRow(source, f"expected {len(columns)} fields; check the quoting and delimiters of this row")
            continue
        if any(row[k] != v for k, v in where.items()):
            continue
        row_id = row.get(entry.id_column) if entry.id_column else None
        if entry.format != "tsv_binary":
            yield RawRow(row[entry.text_column], row[entry.label_column], row_id, source)
            continue
        cells = {name: row[name].strip() for name in entry.label_space.names}
        wrong = [name for name, cell in cells.items() if cell not in ("0", "1")]
        if wrong:
            yield BadRow(source, f"column {wrong[0]!r} must be 0 or 1, got {row[wrong[0]]!r}")
            continue
        yield Record(row[entry.text_column], tuple(name for name, cell in cells.items() if cell == "1"), row_id, source)


def _read_tsv_ids(entry: DatasetEntry, split_spec, path: Path, dataset_dir) -> Iterator[Record | BadRow]:
    names_path = find_file(entry.names_file or "", dataset_dir) if entry.names_file else None
    if names_path is None:
        raise UserError(f"dataset {entry.name!r}: names_file {entry.names_file!r} not found beside {path}")
    names = [line.strip() for line in _decode(names_path).split("\n") if line.strip()]
    if tuple(names) != entry.label_space.names:
        raise UserError(f"{names_path}: its label names differ from dataset {entry.name!r}'s labels.names in the registry")
    text, bad_lines = _decode_lines(path)
    yield from _invalid_utf8(path, bad_lines)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter="\t")
    for row in reader:
        source = f"{path}:{reader.line_num}"
        if not row:
            continue
        if len(row) < 2:
            yield BadRow(source, f"expected text, label ids and id separated by tabs; found {len(row)} field(s)")
            continue
        ids = [part.strip() for part in row[1].split(",") if part.strip()]
        wrong = [part for part in ids if not part.isdigit() or int(part) >= len(names)]
        if wrong:
            yield BadRow(source, f"label id {wrong[0]!r} is not an index into {names_path.name} (0..{len(names) - 1})")
            continue
        yield Record(row[0], tuple(names[int(part)] for part in ids), row[2] if len(row) > 2 else None, source)


def _json_objects(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line of a JSONL file."""
    for number, line in _lines(_decode(path)):
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(f"{path}:{number}: not valid JSON ({exc.msg}); write one JSON object per line") from None
        if not isinstance(row, dict):
            raise UserError(f"{path}:{number}: expected a JSON object, got {type(row).__name__}")
        yield number, row


def _read_jsonl(entry: DatasetEntry, split_spec, path: Path, dataset_dir) -> Iterator[RawRow | BadRow]:
    text, bad_lines = _decode_lines(path)
    yield from _invalid_utf8(path, bad_lines)
    for number, line in _lines(text):
        source = f"{path}:{number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            yield BadRow(source, f"not valid JSON ({exc.msg})")
            continue
        if not isinstance(row, dict):
            yield BadRow(source, f"expected a JSON object, got {type(row).__name__}")
            continue
        missing = [c for c in (entry.text_column, entry.label_column) if c not in row]
        if missing:
            yield BadRow(source, f"missing key {missing[0]!r}; the row has {sorted(row)}")
            continue
        text = row[entry.text_column]
        if not isinstance(text, str):
            yield BadRow(source, f"{entry.text_column!r} must be a string, got {type(text).__name__}")
            continue
        row_id = str(row[entry.id_column]) if entry.id_column and entry.id_column in row else None
        yield RawRow(text, row[entry.label_column], row_id, source)


_READERS = {
    "semicolon": _read_semicolon, "csv": _read_delimited, "tsv": _read_delimited,
    "tsv_binary": _read_delimited, "tsv_ids": _read_tsv_ids, "jsonl": _read_jsonl,
}


def _read_hub(entry: DatasetEntry, split: str) -> Iterator[Record]:
    """Load a split from the Hugging Face hub and map its label feature to names."""
    import datasets

    hub = entry.hub
    hub_split = hub.get("splits", {}).get(split, split)
    try:
        data = datasets.load_dataset(hub["id"], hub.get("config"), split=hub_split)
    except Exception as exc:  # the hub raises many types: offline, missing, gated
        raise UserError(
            f"dataset {entry.name!r} split {split!r}: no local file, and the hub copy {hub['id']} failed to load "
            f"({type(exc).__name__}); put the files in dataset_dir or go online"
        ) from None
    text_column = hub.get("text_column", "text")
    label_column = hub.get("label_column")
    names = entry.label_space.names
    feature = data.features.get(label_column) if label_column else None
    for index, row in enumerate(data):
        if label_column is None:  # one boolean column per label name
            labels = [n for n in names if row[n]]
        else:
            value = row[label_column]
            values = value if isinstance(value, list) else [value]
            inner = getattr(feature, "feature", feature)
            labels = [inner.int2str(v) if hasattr(inner, "int2str") else str(v) for v in values]
        row_id = str(row[hub["id_column"]]) if hub.get("id_column") else None
        yield Record(row[text_column], tuple(labels), row_id, f"hub:{hub['id']}:{hub_split}:{index}")


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
    raise UserError(f"{what}: {len(bad)} bad row(s), first: {first}; fix them, or set on_bad_rows: skip to leave them out")
