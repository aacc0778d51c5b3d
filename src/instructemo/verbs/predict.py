"""`instructemo predict`: label an unlabelled CSV / TSV / JSONL file, of any size.

Single-label output: the id column, `label` and (score mode) `probability`.
Multi-label output: the id column and one 0/1 column per label in the label
space's order, the layout of SemEval / Kaggle `sample_submission.csv` files.

The input streams through in chunks, so memory does not grow with the file.
A first pass checks every row (a bad row stops the run before the model loads
and before anything is written). Predictions are appended to OUTPUT.partial
chunk by chunk; after each chunk OUTPUT.progress.json records how many rows
and bytes are done. A killed run started again with the same command resumes
there: the partial file is cut back to the recorded bytes, so no row is lost
or written twice. At the end the report is written and OUTPUT.partial becomes
OUTPUT in one rename. `--shard i/n` labels the i-th of n contiguous slices
(i from 0), so n processes or machines can share one file.
"""

from __future__ import annotations

import csv
import io
import itertools
import logging
import os
import re
from pathlib import Path

from tqdm.auto import tqdm

from instructemo.config.schema import Config
from instructemo.data.readers import ID_COLUMN_GUESSES, TEXT_COLUMN_GUESSES, TableFile, pick_column
from instructemo.data.records import PATH_FORMATS
from instructemo.errors import UserError
from instructemo.infer.classifier import Classifier
from instructemo.infer.loading import pick_device
from instructemo.report.html import PredictionSummary
from instructemo.run.fileio import json_text, read_json, write_atomic

log = logging.getLogger(__name__)

CHUNK_ROWS = 512  # rows classified, written and checkpointed together
SHOWN_LINES = 10  # line numbers kept for the warnings about empty and unanswered rows


def parse_shard(text: str) -> tuple[int, int]:
    """'i/n' -> (i, n): the i-th (from 0) of n contiguous slices."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text or "")
    if not match or int(match[2]) < 1 or int(match[1]) >= int(match[2]):
        raise UserError(f"--shard {text!r}: write i/n with 0 <= i < n, e.g. --shard 0/4 ... --shard 3/4")
    return int(match[1]), int(match[2])


def run_predict(
    cfg: Config,
    input_path: Path,
    output_path: Path,
    text_column: str | None = None,
    id_column: str | None = None,
    shard: tuple[int, int] = (0, 1),
    chunk_rows: int = CHUNK_ROWS,
    overwrite: bool = False,
) -> dict:
    """Classify every row of input_path (or of its shard) into output_path; return counts of what happened."""
    if chunk_rows < 1:
        raise UserError(f"--chunk-rows {chunk_rows}: give at least 1")
    partial, progress_path, report_path = _paths(output_path)
    _check_output(input_path, output_path, partial, progress_path, report_path)
    if output_path.exists() and not report_path.is_file() and not overwrite:
        # An earlier predict's output has its report beside it; any other file is someone's own.
        raise UserError(
            f"--output {output_path} exists and is not an earlier predict's output (no {report_path.name} beside it); "
            "choose a new file name, or give --overwrite to replace it"
        )
    table = TableFile(input_path)
    total = sum(1 for _ in table.rows())  # reads every row once: a bad row stops here, before anything is written
    if total == 0:
        raise UserError(f"input file {input_path} has no rows")
    columns = table.columns
    if text_column is None and cfg.text_column in columns:
        text_column = cfg.text_column  # the training file's text column, when this file has it too
    text_column = pick_column(input_path, columns, text_column, TEXT_COLUMN_GUESSES, "text")
    id_column = id_column or next((c for c in ID_COLUMN_GUESSES if c in columns), None)
    if id_column is not None and id_column not in columns:
        raise UserError(f"{input_path}: no id column {id_column!r}; the columns are {columns}")
    first, stop = total * shard[0] // shard[1], total * (shard[0] + 1) // shard[1]
    if first == stop:  # more shards than rows: a valid, empty part of the whole
        log.warning("shard %d/%d of %d rows holds no row: its output is the header alone", *shard, total)

    classifier = Classifier(cfg, pick_device(cfg.device, shard=shard[0]))  # shards spread over the GPUs
    space = classifier.space
    key = id_column or "row"
    scored = classifier.mode != "generate" and not space.multi_label
    fields = [key, *space.names] if space.multi_label else [key, "label", *(["probability"] if scored else [])]
    fingerprint = {
        "input": str(input_path.resolve()),
        "input_bytes": input_path.stat().st_size,
        "input_modified_ns": input_path.stat().st_mtime_ns,
        "rows": [first, stop],
        "text_column": text_column,
        "id_column": id_column,
        **classifier.fingerprint(),
        "fields": fields,
    }
    state = _resume_state(partial, progress_path, fingerprint)
    summary = PredictionSummary(state["counts"], state["unsure"], state["blank"])
    done = state["rows_done"]
    if done:
        log.info("resuming %s: %d of %d rows were done", partial, done, stop - first)
    classifier.load(progress=False)

    with partial.open("r+b" if partial.exists() else "w+b") as out:
        out.truncate(state["bytes"])  # a chunk written after the last checkpoint is written again
        out.seek(state["bytes"])
        if state["bytes"] == 0:
            _append(out, _encode([], fields, output_path, header=True))
        rows = itertools.islice(table.rows(), first + done, stop)
        with tqdm(total=stop - first, initial=done, desc="predicting", unit="row") as bar:
            while chunk := list(itertools.islice(rows, chunk_rows)):
                records, report_rows = _classify_chunk(classifier, chunk, text_column, id_column, key, scored, state)
                _append(out, _encode(records, fields, output_path, header=False))
                summary.add(report_rows)
                state.update(summary.state(), rows_done=state["rows_done"] + len(chunk), bytes=out.tell())
                write_atomic(progress_path, json_text(state))
                bar.update(len(chunk))

    context = {
        "model": cfg.model_name_or_path,
        "adapter": str(classifier.adapter),
        "input": str(input_path)
        + ("" if shard == (0, 1) else f" (shard {shard[0]}/{shard[1]}: rows {first}-{stop - 1})"),
        "output": str(output_path),
        "backend": cfg.backend,
        "mode": classifier.mode,
        "dtype": classifier.dtype,
        "device": str(classifier.device),
    }
    write_atomic(report_path, summary.render(list(space.names), context))
    os.replace(partial, output_path)
    progress_path.unlink(missing_ok=True)  # an empty shard never checkpointed
    _warn(state)
    log.info("wrote %d rows to %s", state["rows_done"], output_path)
    return {"rows": state["rows_done"], "empty_text": state["empty"], "invalid": state["invalid"]}


def _paths(output_path: Path) -> tuple[Path, Path, Path]:
    return (
        output_path.with_name(output_path.name + ".partial"),
        output_path.with_name(output_path.name + ".progress.json"),
        output_path.with_name(output_path.stem + ".report.html"),
    )


def _check_output(input_path: Path, output_path: Path, *written: Path) -> None:
    if output_path.suffix.lower() not in PATH_FORMATS:
        raise UserError(f"output {output_path}: use a .csv, .tsv or .jsonl file name")
    for path in (output_path, *written):
        if path.resolve() == input_path.resolve():
            raise UserError(
                f"--output would overwrite the input file {input_path}; write the predictions to another file"
            )
    if output_path.is_dir():
        raise UserError(f"--output {output_path} is a directory; name a file such as predictions.csv")


def _resume_state(partial: Path, progress_path: Path, fingerprint: dict) -> dict:
    """Where an earlier run of the same job stopped, or a fresh start."""
    fresh = {
        "fingerprint": fingerprint,
        "rows_done": 0,
        "bytes": 0,
        "empty": 0,
        "empty_lines": [],
        "invalid": 0,
        "invalid_lines": [],
        **PredictionSummary().state(),
    }
    if not progress_path.is_file() or not partial.is_file():
        return fresh
    state = read_json(progress_path)
    earlier = state.get("fingerprint", {})
    changed = [k for k in fingerprint if earlier.get(k) != fingerprint[k]]
    if changed:
        raise UserError(
            f"{partial} holds an unfinished run of another job ({', '.join(changed)} differ); run the same command "
            f"to resume it, or delete {partial.name} and {progress_path.name} to start over"
        )
    if partial.stat().st_size < state["bytes"]:
        raise UserError(f"{partial} is shorter than its checkpoint says; delete it and {progress_path.name}")
    return state


def _classify_chunk(classifier, chunk, text_column, id_column, key, scored, state) -> tuple[list[dict], list[dict]]:
    space = classifier.space
    texts = [str(row.get(text_column) or "") for _, row in chunk]
    todo = [i for i, text in enumerate(texts) if text.strip()]
    result = classifier.classify([texts[i] for i in todo]) if todo else None
    labels: list = [None] * len(chunk)
    probabilities: list = [None] * len(chunk)
    for position, i in enumerate(todo):
        labels[i] = result.labels[position]
        if result.probabilities is not None:
            probabilities[i] = result.probabilities[position]
    records, report_rows = [], []
    for (line, row), text, predicted, probs in zip(chunk, texts, labels, probabilities):
        record = {key: row.get(id_column) if id_column else line}
        if space.multi_label:
            chosen = set(predicted or ())
            record.update({name: int(name in chosen) for name in space.names})
        else:
            record["label"] = predicted[0] if predicted else ""
            if scored:
                record["probability"] = round(float(probs.max()), 6) if probs is not None else ""
        records.append(record)
        report_rows.append(
            {
                "id": record[key],
                "text": text,
                "predicted": list(predicted) if predicted is not None else None,
                "confidence": float(probs.max()) if probs is not None else None,
            }
        )
        if not text.strip():
            _note(state, "empty", line)
        elif predicted is None:
            _note(state, "invalid", line)
    return records, report_rows


def _note(state: dict, what: str, line: int) -> None:
    state[what] += 1
    if len(state[f"{what}_lines"]) < SHOWN_LINES:
        state[f"{what}_lines"].append(line)


def _encode(records: list[dict], fields: list[str], path: Path, header: bool) -> bytes:
    if PATH_FORMATS[path.suffix.lower()] == "jsonl":
        return "".join(json_text(r, indent=None) + "\n" for r in records).encode()
    buffer = io.StringIO(newline="")
    delimiter = "," if path.suffix.lower() == ".csv" else "\t"
    writer = csv.DictWriter(buffer, fieldnames=fields, delimiter=delimiter, lineterminator="\n")
    if header:
        writer.writeheader()
    writer.writerows(records)
    return buffer.getvalue().encode()


def _append(out, data: bytes) -> None:
    out.write(data)
    out.flush()
    os.fsync(out.fileno())  # on disk before the checkpoint that counts it


def _warn(state: dict) -> None:
    shown = ", ..."

    def lines(what: str) -> str:
        return ", ".join(map(str, state[f"{what}_lines"])) + (shown if state[what] > SHOWN_LINES else "")

    if state["empty"]:
        log.warning("%d row(s) have empty text and got no label (lines %s)", state["empty"], lines("empty"))
    if state["invalid"]:
        log.warning(
            "%d answer(s) named no label and were left blank (lines %s); mode: score always gives one",
            state["invalid"],
            lines("invalid"),
        )
