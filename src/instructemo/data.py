"""Datasets: the registry, file readers for each format, and the hub fallback.

Every reader yields rows that remember their file and line, so a bad row is
reported where the user can find it. Rows are validated against the label
space before any model is loaded.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import yaml

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
        known = {f for f in cls.__dataclass_fields__} - {"name", "format", "splits", "label_space"}
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
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"registry {path} is not valid YAML: {getattr(exc, 'problem', exc)}") from None
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


def resolve_label_space(spec: str, dataset_dir: str | Path, text_column=None, label_column=None) -> tuple[LabelSpace, str]:
    """The label space and default template of a dataset spec, without reading a registry dataset's rows."""
    entry, _ = _entry_for(spec, dataset_dir, text_column, label_column, default_split="train")
    return entry.label_space, entry.template


def load_split(
    spec: str,
    dataset_dir: str | Path,
    *,
    default_split: str = "train",
    max_samples: int | None = None,
    text_column: str | None = None,
    label_column: str | None = None,
    label_space: LabelSpace | None = None,
    on_bad_rows: str = "error",
) -> Split:
    """Read `name[:split]` or a file path into validated records.

    With `label_space` given, the rows are checked against it instead of the
    dataset's own (so evaluation uses the labels the model was trained on).
    Bad rows (empty text, labels outside the space, wrong number of columns,
    invalid UTF-8, a repeated id) stop the run with their count and lines, or
    with on_bad_rows="skip" are left out and reported.
    """
    entry, split = _entry_for(spec, dataset_dir, text_column, label_column, default_split)
    space = label_space or entry.label_space
    split_spec = entry.splits[split]
    path = _find_file(split_spec["file"], dataset_dir)
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
    return Split(split, records, space, entry.template, origin, bad)


def default_eval_spec(train_spec: str, dataset_dir: str | Path, text_column=None, label_column=None) -> str:
    """The evaluation split paired with a training spec: its test split, else dev/validation."""
    entry, _ = _entry_for(train_spec, dataset_dir, text_column, label_column, "train")
    if entry.name.startswith("path:"):
        raise UserError("set eval_dataset: a file dataset has no test split to evaluate on by default")
    for split in EVAL_SPLIT_PREFERENCE:
        if split in entry.splits:
            return f"{entry.name}:{split}"
    raise UserError(f"dataset {entry.name!r} has no test or dev split; set eval_dataset to name:split")


def default_dev_spec(train_spec: str, dataset_dir: str | Path, text_column=None, label_column=None) -> str:
    """The split used to choose checkpoints and thresholds: the dataset's dev/validation split."""
    entry, _ = _entry_for(train_spec, dataset_dir, text_column, label_column, "train")
    for split in DEV_SPLIT_PREFERENCE:
        if split in entry.splits:
            return f"{entry.name}:{split}"
    raise UserError(f"dataset {entry.name!r} has no dev or validation split; set select_dataset to a name:split or file")


# --- resolving a spec ----------------------------------------------------------


def _entry_for(spec: str, dataset_dir, text_column, label_column, default_split: str) -> tuple[DatasetEntry, str]:
    if Path(spec).suffix.lower() in (*PATH_FORMATS, ".txt"):
        return _path_entry(Path(spec), text_column, label_column), "data"
    name, _, split = spec.partition(":")
    registry = load_registry(dataset_dir)
    if name not in registry:
        import difflib

        hint = difflib.get_close_matches(name, registry, n=1)
        fix = f"did you mean {hint[0]!r}?" if hint else f"known: {', '.join(sorted(registry))}"
        raise UserError(f"unknown dataset {name!r}: not in the registry and not a .csv/.tsv/.jsonl path; {fix}")
    entry = registry[name]
    split = split or default_split
    if split not in entry.splits:
        raise UserError(f"dataset {name!r} has no split {split!r}; it has {', '.join(entry.splits)}")
    return entry, split


def _path_entry(path: Path, text_column: str | None, label_column: str | None) -> DatasetEntry:
    """A one-split entry for a user's file; columns and label space are inferred from it."""
    if not path.is_file():
        raise UserError(f"dataset file {path} not found; check the path (relative paths start at {Path.cwd()})")
    fmt = PATH_FORMATS.get(path.suffix.lower(), "semicolon")
    probe = DatasetEntry(
        name=f"path:{path}", format=fmt, splits={"data": {"file": str(path)}},
        label_space=LabelSpace(("?",)), header=_has_header_line(path) if fmt == "semicolon" else True,
    )
    columns = _columns_of(probe, path)
    if fmt != "semicolon":
        probe.text_column = pick_column(path, columns, text_column, TEXT_COLUMN_GUESSES, "text")
        probe.label_column = pick_column(path, columns, label_column, LABEL_COLUMN_GUESSES, "label")
        probe.id_column = next((c for c in ID_COLUMN_GUESSES if c in columns), None)
    labels: set[str] = set()
    multi = False
    for record in _read_rows(probe, probe.splits["data"], path, path.parent):
        if isinstance(record, BadRow):
            continue  # reported when the split loads
        labels.update(record.labels)
        multi = multi or len(record.labels) != 1
    if not labels:
        raise UserError(f"dataset file {path} has no labelled rows")
    probe.label_space = LabelSpace(tuple(sorted(labels)), multi_label=multi)
    probe.template = "multi_label" if multi else "single_label"
    return probe


def _has_header_line(path: Path) -> bool:
    first = next(_lines(_decode(path)), (0, ""))[1]
    return first.strip().lower() in ("text;label", "text;label_name", "text;labels")


def _columns_of(entry: DatasetEntry, path: Path) -> list[str]:
    if entry.format == "jsonl":
        first = next(_json_objects(path), (0, {}))[1]
        return list(first)
    if entry.format in ("csv", "tsv"):
        reader = csv.reader(io.StringIO(_decode(path), newline=""), delimiter="," if entry.format == "csv" else "\t")
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


def _find_file(relative: str, dataset_dir: str | Path) -> Path | None:
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
    """The file as text with lines that are not valid UTF-8 blanked out, and their numbers."""
    data = path.read_bytes()
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
    readers = {
        "semicolon": _read_semicolon, "csv": _read_delimited, "tsv": _read_delimited,
        "tsv_binary": _read_delimited, "tsv_ids": _read_tsv_ids, "jsonl": _read_jsonl,
    }
    for record in readers[entry.format](entry, split_spec, path, dataset_dir):
        if isinstance(record, Record) and not record.text.strip():
            record = BadRow(record.source, "empty text")
        yield record


def _read_semicolon(entry: DatasetEntry, split_spec, path: Path, dataset_dir) -> Iterator[Record | BadRow]:
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
        yield Record(text, (label.strip(),), None, f"{path}:{number}")


def _read_delimited(entry: DatasetEntry, split_spec, path: Path, dataset_dir) -> Iterator[Record | BadRow]:
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
        if entry.format == "tsv_binary":
            cells = {name: row[name].strip() for name in entry.label_space.names}
            wrong = [name for name, cell in cells.items() if cell not in ("0", "1")]
            if wrong:
                yield BadRow(source, f"column {wrong[0]!r} must be 0 or 1, got {row[wrong[0]]!r}")
                continue
            labels = [name for name, cell in cells.items() if cell == "1"]
        else:
            labels = _split_labels(row[entry.label_column], entry.label_separator)
        yield Record(row[entry.text_column], tuple(labels), row.get(entry.id_column) if entry.id_column else None, source)


def _split_labels(cell: str, separator: str) -> list[str]:
    return [part.strip() for part in cell.split(separator) if part.strip()]


def _read_tsv_ids(entry: DatasetEntry, split_spec, path: Path, dataset_dir) -> Iterator[Record | BadRow]:
    names_path = _find_file(entry.names_file or "", dataset_dir) if entry.names_file else None
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
        ids = _split_labels(row[1], ",")
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


def _read_jsonl(entry: DatasetEntry, split_spec, path: Path, dataset_dir) -> Iterator[Record | BadRow]:
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
        label = row[entry.label_column]
        labels = [str(v) for v in label] if isinstance(label, list) else _split_labels(str(label), entry.label_separator)
        text = row[entry.text_column]
        if not isinstance(text, str):
            yield BadRow(source, f"{entry.text_column!r} must be a string, got {type(text).__name__}")
            continue
        yield Record(text, tuple(labels), str(row[entry.id_column]) if entry.id_column and entry.id_column in row else None, source)


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
        return BadRow(record.source, f"label(s) {unknown} outside the label space {list(space.names)}")
    if not space.multi_label and len(record.labels) != 1:
        return BadRow(record.source, f"{len(record.labels)} labels in a single-label dataset (need exactly one)")
    if record.id is not None:
        if record.id in first_seen:
            return BadRow(record.source, f"id {record.id!r} repeats the row at {first_seen[record.id]}")
        first_seen[record.id] = record.source
    return record


def _report_bad_rows(bad: list[BadRow], what: str, policy: str) -> None:
    first = "; ".join(f"{row.source}: {row.reason}" for row in bad[:3])
    if policy == "skip":
        log.warning("%s: skipped %d bad row(s), first: %s", what, len(bad), first)
        return
    raise UserError(f"{what}: {len(bad)} bad row(s), first: {first}; fix them, or set on_bad_rows: skip to leave them out")
