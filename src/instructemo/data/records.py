"""Rows as they are read, a dataset's registry entry, and how a label cell becomes label names.

Every row remembers its file and line (`source`), so a bad row is reported
where the user can find it.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from instructemo.data.labels import LabelSpace
from instructemo.errors import UserError

FORMATS = ("semicolon", "csv", "tsv", "tsv_binary", "tsv_ids", "jsonl")
PATH_FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl"}
# Label cells that mean "no value" in the files spreadsheets, pandas and databases export.
MISSING_LABELS = frozenset({"nan", "-nan", "null", "none", "na", "n/a", "#n/a", "<na>", "nil", "undefined"})


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
    # A reviewed list of rows to leave out (an audit's issues.csv, say): data/exclusions.py.
    exclude_ids: str | None = None

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
        known = {f for f in cls.__dataclass_fields__} - {
            "name",
            "format",
            "splits",
            "label_space",
            "from_path",
            "index_labels",
        }
        unknown = sorted(set(data) - known)
        if unknown:
            raise UserError(f"{where}: dataset {name!r} has unknown keys {unknown}; known: {sorted(known)}")
        return cls(name=name, format=fmt, splits=splits, label_space=label_space, **data)


class _NoLabel(Exception):
    """Why a label value names no label."""


def text_problem(text: str) -> str | None:
    """Why `text` is not text a model can read, or None. The one check every way in makes (data files, predict's
    input, classify's arguments and stdin, serve's requests): a JSON escape such as \\ud800, or a byte that is not
    UTF-8 in a command's arguments, becomes half of a surrogate pair, which no tokenizer can encode."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return f"holds {text[exc.start]!r} at character {exc.start}, half of a surrogate pair: not Unicode text"
    return None


def cell_parts(cell: str, entry: DatasetEntry) -> list[str]:
    return [part.strip() for part in cell.split(entry.label_separator) if part.strip()]


def labels_of(value: Any, entry: DatasetEntry) -> tuple[str, ...] | str:
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
        parts = cell_parts(cell, entry)
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
    if entry.index_labels and is_integer(name):
        if not 0 <= int(name) < len(names):
            raise _NoLabel(f"label index {name} is outside labels (0..{len(names) - 1})")
        return names[int(name)]
    if name.casefold() in MISSING_LABELS and name not in names:
        raise _NoLabel(
            f"the label {name!r} looks like a missing value; fill it in (or, if it is a class, declare it in labels:)"
        )
    return name


def is_integer(name: str) -> bool:
    return re.fullmatch(r"-?\d+", name) is not None
