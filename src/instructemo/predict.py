"""`instructemo predict`: label an unlabelled CSV / TSV / JSONL file.

Single-label output: the id column, `label` and (score mode) `probability`.
Multi-label output: the id column and one 0/1 column per label in the label
space's order, the layout of SemEval / Kaggle `sample_submission.csv` files.
"""

from __future__ import annotations

import csv
import io
import logging
from pathlib import Path

from .config import Config
from .errors import UserError
from .fileio import json_text, write_atomic
from .html_report import render_predictions
from .infer.classifier import Classifier
from .readers import ID_COLUMN_GUESSES, TEXT_COLUMN_GUESSES, pick_column, read_table
from .records import PATH_FORMATS

log = logging.getLogger(__name__)


def run_predict(
    cfg: Config, input_path: Path, output_path: Path, text_column: str | None = None, id_column: str | None = None
) -> dict:
    """Classify every row of input_path into output_path; return counts of what happened."""
    if output_path.suffix.lower() not in PATH_FORMATS:
        raise UserError(f"output {output_path}: use a .csv, .tsv or .jsonl file name")
    report_path = output_path.with_name(output_path.stem + ".report.html")
    for written in (output_path, report_path):
        if written.resolve() == input_path.resolve():
            raise UserError(
                f"--output would overwrite the input file {input_path}; write the predictions to another file"
            )
    if output_path.is_dir():
        raise UserError(f"--output {output_path} is a directory; name a file such as predictions.csv")
    columns, rows = read_table(input_path)
    if text_column is None and cfg.text_column in columns:
        text_column = cfg.text_column  # the training file's text column, when this file has it too
    text_column = pick_column(input_path, columns, text_column, TEXT_COLUMN_GUESSES, "text")
    id_column = id_column or next((c for c in ID_COLUMN_GUESSES if c in columns), None)
    if id_column is not None and id_column not in columns:
        raise UserError(f"{input_path}: no id column {id_column!r}; the columns are {columns}")
    classifier = Classifier(cfg)
    texts = [str(row.get(text_column) or "") for _, row in rows]
    empty_lines = [line for (line, _), text in zip(rows, texts) if not text.strip()]
    todo = [i for i, text in enumerate(texts) if text.strip()]

    classifier.load()
    result = classifier.classify([texts[i] for i in todo]) if todo else None
    space = classifier.space
    labels: list = [None] * len(rows)
    probabilities: list = [None] * len(rows)
    for position, i in enumerate(todo):
        labels[i] = result.labels[position]
        if result.probabilities is not None:
            probabilities[i] = result.probabilities[position]

    key = id_column or "row"
    records = []
    for (line, row), predicted, probs in zip(rows, labels, probabilities):
        record = {key: row[id_column] if id_column else line}
        if space.multi_label:
            chosen = set(predicted or ())
            record.update({name: int(name in chosen) for name in space.names})
        else:
            record["label"] = predicted[0] if predicted else ""
            if result is not None and result.probabilities is not None:
                record["probability"] = round(float(probs.max()), 6) if probs is not None else ""
        records.append(record)
    _write_records(output_path, records)
    report_rows = [
        {
            "id": record[key],
            "text": text,
            "predicted": list(predicted) if predicted is not None else None,
            "confidence": float(probs.max()) if probs is not None else None,
        }
        for record, text, predicted, probs in zip(records, texts, labels, probabilities)
    ]
    context = {
        "model": cfg.model_name_or_path,
        "adapter": str(classifier.adapter),
        "input": str(input_path),
        "output": str(output_path),
        "backend": cfg.backend,
        "mode": classifier.mode,
    }
    write_atomic(report_path, render_predictions(report_rows, list(space.names), context))

    invalid_lines = [rows[i][0] for i in todo if labels[i] is None]
    if empty_lines:
        log.warning("%d row(s) have empty text and got no label (lines %s)", len(empty_lines), _first(empty_lines))
    if invalid_lines:
        log.warning(
            "%d answer(s) named no label and were left blank (lines %s); mode: score always gives one",
            len(invalid_lines),
            _first(invalid_lines),
        )
    log.info("wrote %d rows to %s", len(records), output_path)
    return {"rows": len(records), "empty_text": len(empty_lines), "invalid": len(invalid_lines)}


def _first(lines: list[int], shown: int = 10) -> str:
    text = ", ".join(map(str, lines[:shown]))
    return text + (", ..." if len(lines) > shown else "")


def _write_records(path: Path, records: list[dict]) -> None:
    if path.suffix.lower() in (".jsonl", ".json"):
        write_atomic(path, "".join(json_text(r, indent=None) + "\n" for r in records))
        return
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(
        buffer,
        fieldnames=list(records[0]),
        delimiter="," if path.suffix.lower() == ".csv" else "\t",
        lineterminator="\n",
    )
    writer.writeheader()
    writer.writerows(records)
    write_atomic(path, buffer.getvalue())
