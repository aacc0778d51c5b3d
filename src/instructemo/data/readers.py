"""File readers, one per format, and the hub fallback: each yields rows that remember their file and line.

Invalid UTF-8, a wrong number of fields or a malformed JSON line becomes a
`BadRow` with its line, never a silently dropped row; `data.load_split`
decides whether bad rows stop the run or are skipped and reported.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import logging
import os
from pathlib import Path
from typing import Any, Iterable, Iterator

from instructemo.data.records import PATH_FORMATS, BadRow, DatasetEntry, RawRow, Record, labels_of, text_problem
from instructemo.errors import UserError

log = logging.getLogger(__name__)

TEXT_COLUMN_GUESSES = ("text", "sentence", "tweet", "Tweet", "review", "content", "comment")
LABEL_COLUMN_GUESSES = ("label", "labels", "emotion", "emotions", "sentiment", "label_name", "class")
ID_COLUMN_GUESSES = ("id", "ID", "Id", "example_id", "row_id")

# Texts longer than the csv module's default field limit (128 KiB), such as whole reviews, are ordinary data.
csv.field_size_limit(2**31 - 1)


def shared_data_dir() -> Path:
    """The team's shared datasets folder: INSTRUCTEMO_SHARED_DATA, else shared/data beside a checkout's folder."""
    checkout = (
        Path(__file__).resolve().parents[3]
    )  # src/instructemo/data/readers.py; an installed package's is site-packages' parent: no such folder
    return Path(os.environ.get("INSTRUCTEMO_SHARED_DATA", checkout.parent / "shared" / "data"))


def find_file(relative: str, dataset_dir: str | Path) -> Path | None:
    candidate = Path(relative)
    if candidate.is_absolute():
        return candidate if candidate.is_file() else None
    for base in (Path(dataset_dir), shared_data_dir()):
        if (base / candidate).is_file():
            return base / candidate
    return None


class TableFile:
    """An unlabelled CSV, TSV or JSONL file (predict's input), read row by row as often as needed, never whole.

    `rows()` yields (line, row) pairs; a row that cannot be read (a wrong number
    of fields, a malformed JSON line, invalid UTF-8) stops it with a one-line
    error naming the line.
    """

    SNIFF_ROWS = 100  # a JSONL file's columns: the keys of its first rows

    def __init__(self, path: Path):
        self.path = path
        self.format = PATH_FORMATS.get(path.suffix.lower())
        if self.format not in ("csv", "tsv", "jsonl"):
            raise UserError(f"{path}: unsupported file type {path.suffix!r}; use .csv, .tsv or .jsonl")
        if not path.is_file():
            raise UserError(f"input file {path} not found; check the path")
        if self.format == "jsonl":
            keys: dict[str, None] = {}
            for n, (_, row) in enumerate(self.rows()):
                keys.update(dict.fromkeys(row))
                if n + 1 >= self.SNIFF_ROWS:
                    break
            self.columns = list(keys)
        else:
            with self._open() as handle:
                self.columns = next(csv.reader(handle, delimiter=self._delimiter()), [])

    def _delimiter(self) -> str:
        return "," if self.format == "csv" else "\t"

    def _open(self) -> io.TextIOWrapper:
        raw = self.path.open("rb")
        head = raw.read(3)
        if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
            raw.close()
            raise UserError(f"{self.path} is UTF-16 text; save it as UTF-8 (in Excel: CSV UTF-8)")
        raw.seek(len(codecs.BOM_UTF8) if head == codecs.BOM_UTF8 else 0)  # Excel writes a UTF-8 BOM
        # newline="": lines end at \n, \r\n or \r alone (old Mac exports), and quoted CSV fields keep theirs.
        return io.TextIOWrapper(raw, encoding="utf-8", newline="")

    def rows(self) -> Iterator[tuple[int, dict[str, Any]]]:
        line = 0
        try:
            with self._open() as handle:
                if self.format == "jsonl":
                    numbered = ((n, text.rstrip("\r\n")) for n, text in enumerate(handle, start=1))
                    for line, row, problem in _json_lines((n, t) for n, t in numbered if t.strip()):
                        if problem is not None:
                            raise UserError(f"{self.path}:{line}: {problem}")
                        yield line, row
                    return
                reader = csv.DictReader(handle, delimiter=self._delimiter())
                for row in reader:
                    line = reader.line_num
                    if None in row or any(v is None for v in row.values()):
                        raise UserError(
                            f"{self.path}:{line}: expected {len(self.columns)} fields; check the quoting and delimiters"
                        )
                    yield line, row
        except UnicodeDecodeError:
            raise UserError(f"{self.path}: invalid UTF-8 after line {line}; re-save the file as UTF-8") from None


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


def has_header_line(path: Path) -> bool:
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
        log.warning(
            "%s: line 1 %r read as the header (its label %r is on no other line); name the columns "
            "text;label to say so",
            path,
            first.strip()[:80],
            label.strip(),
        )
        return True
    return False


def columns_of(entry: DatasetEntry, path: Path) -> list[str]:
    text = _decode_lines(path)[0]  # an undecodable row is reported, with its line, when the split loads
    if entry.format == "jsonl":
        return next((list(row) for _, row, _ in _json_lines(_lines(text)) if row is not None), [])
    if entry.format in ("csv", "tsv"):
        reader = csv.reader(io.StringIO(text, newline=""), delimiter="," if entry.format == "csv" else "\t")
        return next(reader, [])
    return []


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


def _json_lines(numbered: Iterable[tuple[int, str]]) -> Iterator[tuple[int, dict[str, Any] | None, str | None]]:
    """(line number, object, None) for each non-blank JSONL line that holds a JSON object, else (line, None, why not)."""
    for number, line in numbered:
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            yield number, None, f"not valid JSON ({exc.msg}); write one JSON object per line"
            continue
        if not isinstance(row, dict):
            yield number, None, f"expected a JSON object, got {type(row).__name__}; write one JSON object per line"
            continue
        problem = next(
            (f"{key!r} {p}" for key, v in row.items() if isinstance(v, str) and (p := text_problem(v))), None
        )
        if problem is not None:
            yield number, None, problem
            continue
        yield number, row, None


def read_rows(entry: DatasetEntry, split_spec: dict, path: Path, dataset_dir) -> Iterator[Record | BadRow]:
    for row in READERS[entry.format](entry, split_spec, path, dataset_dir):
        if isinstance(row, RawRow):
            labels = labels_of(row.label, entry)
            row = (
                BadRow(row.source, labels) if isinstance(labels, str) else Record(row.text, labels, row.id, row.source)
            )
        if isinstance(row, Record) and not row.text.strip():
            row = BadRow(row.source, "empty text")
        yield row


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
    needed = [entry.text_column] + (
        list(entry.label_space.names) if entry.format == "tsv_binary" else [entry.label_column]
    )
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
        raise UserError(
            f"{names_path}: its label names differ from dataset {entry.name!r}'s labels.names in the registry"
        )
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


def _read_jsonl(entry: DatasetEntry, split_spec, path: Path, dataset_dir) -> Iterator[RawRow | BadRow]:
    text, bad_lines = _decode_lines(path)
    yield from _invalid_utf8(path, bad_lines)
    for number, row, problem in _json_lines(_lines(text)):
        source = f"{path}:{number}"
        if problem is not None:
            yield BadRow(source, problem)
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


READERS = {
    "semicolon": _read_semicolon,
    "csv": _read_delimited,
    "tsv": _read_delimited,
    "tsv_binary": _read_delimited,
    "tsv_ids": _read_tsv_ids,
    "jsonl": _read_jsonl,
}


def read_hub(entry: DatasetEntry, split: str) -> Iterator[Record]:
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
