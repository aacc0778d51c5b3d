"""Reviewed exclusion lists: a registry entry's `exclude_ids:` names rows to leave out, never a silent edit.

A cleaned dataset is the data plus a list a person reviewed. The list is a CSV
with an `id` and a `split` column (an `instructemo audit` issues.csv, with the
rows the reviewer disagrees with deleted, is one); a `text` column, where there
is one, is checked against the row, so a list made for another version of the
file is refused rather than dropping the wrong rows. Every listed row of the
split must be found.

A row's id is the dataset's own id column when it has one, else `line:N` (its
line in the file) or `row:N` (its index in a hub split).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from instructemo.data.records import Record
from instructemo.errors import UserError, shown
from instructemo.run.directory import AUDIT_ISSUES_FILE, AUDIT_SUMMARY_FILE, RunDir
from instructemo.run.fileio import file_digest, read_json

NEEDED_COLUMNS = ("id", "split")


def row_id(record: Record) -> str:
    """The id an exclusion list names a row by."""
    if record.id is not None:
        return record.id
    number = record.source.rsplit(":", 1)[1]
    return f"row:{number}" if record.source.startswith("hub:") else f"line:{number}"


@dataclass
class Exclusions:
    """The rows one split's exclusion list names, by id, with their texts where the list gives them."""

    file: Path
    split: str
    texts: dict[str, str | None]

    @classmethod
    def read(cls, path: Path, split: str) -> Exclusions:
        try:
            with path.open(newline="", encoding="utf-8") as handle:
                reader = csv.DictReader(handle)
                missing = [c for c in NEEDED_COLUMNS if c not in (reader.fieldnames or [])]
                if missing:
                    raise UserError(
                        f"exclusion list {path} has no {' or '.join(missing)} column; it needs id and split "
                        "columns (an issues.csv from instructemo audit has them)"
                    )
                texts = {}
                for row in reader:
                    if row["split"] == split and row["id"]:
                        texts[row["id"]] = row.get("text")
        except UnicodeDecodeError:
            raise UserError(f"exclusion list {path} is not UTF-8 text; re-save it as UTF-8") from None
        return cls(path, split, texts)

    def keeps(self, record: Record) -> bool:
        """False for a listed row; refuses a listed id whose text is not the row's."""
        key = row_id(record)
        if key not in self.texts:
            return True
        listed = self.texts[key]
        if listed is not None and " ".join(listed.split()) != " ".join(record.text.split()):
            raise UserError(
                f"exclusion list {self.file} names {key} of split {self.split!r} with the text {listed[:60]!r}, "
                f"but {record.source} holds {record.text[:60]!r}: the list was made for another version of the "
                "file; audit the current file again"
            )
        return False

    def check_all_found(self, found: set[str], what: str) -> None:
        missing = sorted(set(self.texts) - found)
        if missing:
            raise UserError(
                f"exclusion list {self.file} names {len(missing)} row(s) that {what} does not have "
                f"({shown(missing)}); the list was made for other data: audit this data again"
            )


def audit_flags(audit_dir: Path, records: list[Record], file: str | None) -> tuple[set[int], str]:
    """The indices of `records` (read from `file`) that the audit in audit_dir flagged, and that split's name.

    Refused when the audit did not cover these rows: the file's digest must be
    the one the audit recorded, and every flagged row must be found with its text.
    """
    run = RunDir(audit_dir, "audit folder")
    manifest = run.manifest()
    if manifest is None or manifest.get("kind") != "audit":
        raise UserError(
            f"--unflagged {audit_dir} is not an instructemo audit folder; give output_dir/audit of an audit"
        )
    run.require_complete()
    digest = file_digest(Path(file)) if file else None
    parts = read_json(audit_dir / AUDIT_SUMMARY_FILE)["splits"]
    part = next((p for p in parts.values() if digest is not None and p.get("sha256") == digest), None)
    if part is None:
        audited = ", ".join(f"{role} ({p.get('file')})" for role, p in parts.items())
        raise UserError(
            f"the audit in {audit_dir} covered {audited}, not these rows ({file}); audit them with --split test or all"
        )
    exclusions = Exclusions.read(audit_dir / AUDIT_ISSUES_FILE, part["split"])
    flagged = {i for i, record in enumerate(records) if not exclusions.keeps(record)}
    if len(records) == part["rows"]:
        exclusions.check_all_found({row_id(r) for r in records}, f"the evaluated file {file}")
    return flagged, part["split"]
