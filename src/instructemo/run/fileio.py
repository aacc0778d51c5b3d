"""Files read and written strictly: whole or absent, no NaN in JSON, no repeated key in YAML.

Every file goes to a temporary name beside its target, is flushed to disk and
renamed into place, so a reader never sees one half-written. JSON is strict
(no NaN or Infinity, which most readers reject), and a damaged JSON file is a
one-line error that says what to rerun. YAML (configs, the dataset registry)
refuses a key given twice instead of letting the last one win silently.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable

import yaml

from instructemo.errors import UserError


def _finite(value: Any) -> Any:
    """The value with every NaN or infinity replaced by None, so the JSON written is strict."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def json_text(value: Any, indent: int | None = 2) -> str:
    """Strict JSON (no NaN or Infinity, which most JSON readers reject): non-finite numbers become null."""
    return json.dumps(_finite(value), indent=indent, ensure_ascii=False, allow_nan=False)


def jsonl_text(rows: Iterable[Any]) -> str:
    return "".join(json_text(row, indent=None) + "\n" for row in rows)


def csv_text(rows: list[dict], fields: Iterable[str]) -> str:
    """A header of `fields`, then a line per row (a dict keyed by them)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(fields), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def file_digest(path: Path) -> str:
    """The first 16 hex digits of a file's SHA-256, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:16]


def write_atomic(path: Path, text: str | bytes) -> None:
    """Write to a temporary file beside `path`, flush it to disk, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(text.encode("utf-8") if isinstance(text, str) else text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def _no_constants(name: str):
    raise ValueError(f"{name} is not JSON")


def read_json(path: Path) -> Any:
    """A JSON file a run wrote; a damaged one, or one holding NaN, is a one-line error, not a traceback."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"), parse_constant=_no_constants)
    except (ValueError, UnicodeDecodeError) as exc:
        raise UserError(
            f"{path} is not strict JSON ({exc}); it is damaged or from a broken run: run the step that writes it again"
        ) from None


def read_jsonl(path: Path) -> list[Any]:
    """The rows of a JSONL file a run wrote (trainer_log.jsonl)."""
    # split("\n"), not splitlines(): a text may hold U+2028 and other characters splitlines() ends a line at
    text = Path(path).read_text(encoding="utf-8")
    rows = []
    for number, line in enumerate(text.split("\n"), start=1):
        if line.strip():
            try:
                rows.append(json.loads(line, parse_constant=_no_constants))
            except ValueError as exc:
                raise UserError(
                    f"{path}:{number} is not strict JSON ({exc}); the file is damaged or cut short: run the step "
                    "that writes it again"
                ) from None
    return rows


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.safe_load, except that a key given twice in one mapping is an error instead of the last one winning."""


def _mapping_without_repeats(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"key {key!r} appears twice (first at line {seen[key]})", key_node.start_mark
            )
        seen[key] = key_node.start_mark.line + 1
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_repeats)


def read_yaml_file(path: Path, what: str) -> Any:
    """A YAML file (a config or a registry), with repeated keys and bad syntax as one-line errors."""
    try:
        return yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        fix = "keep one of them" if "appears twice" in problem else "fix the syntax"
        raise UserError(f"{what} {path} is not valid YAML{where}: {problem}; {fix}") from None
    except UnicodeDecodeError:
        raise UserError(f"{what} {path} is not UTF-8 text; save it as UTF-8") from None
