"""Small verbs for everyday use: `datasets` (what can be trained on), `classify` (a quick answer).

Also what the webui asks of a user's file, through the CLI's own checks:
its columns and label counts (`describe_dataset`), and a test split held out
of it (`hold_out`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import sys
from collections import Counter
from pathlib import Path
from typing import Iterable

from instructemo.config.schema import Config
from instructemo.data.datasets import entry_for, load_registry, load_split
from instructemo.data.readers import find_file
from instructemo.data.records import text_problem
from instructemo.data.stratify import held_out_indices
from instructemo.errors import UserError
from instructemo.infer.classifier import Classifier
from instructemo.run.fileio import write_atomic

log = logging.getLogger(__name__)


# --- instructemo datasets ------------------------------------------------------------


def list_datasets(dataset_dir: str) -> list[dict]:
    """Every registry entry with its splits' sizes, label space, and where each split would load from."""
    listing = []
    for name, entry in load_registry(dataset_dir).items():
        splits = {}
        for split, spec in entry.splits.items():
            path = find_file(spec["file"], dataset_dir)
            if path is not None:
                try:
                    rows = len(load_split(f"{name}:{split}", dataset_dir, on_bad_rows="skip").records)
                except UserError as exc:
                    rows = f"unreadable: {exc}"
                splits[split] = {"rows": rows, "from": str(path)}
            else:
                splits[split] = {"rows": None, "from": f"hub:{entry.hub['id']}" if entry.hub else "missing"}
        space = entry.label_space
        listing.append(
            {
                "name": name,
                "description": getattr(entry, "description", ""),
                "format": entry.format,
                "multi_label": space.multi_label,
                "labels": list(space.names),
                "splits": splits,
            }
        )
    return listing


def print_datasets(listing: list[dict], out=None) -> None:
    out = out or sys.stdout
    for item in listing:
        kind = "multi-label" if item["multi_label"] else "single-label"
        print(f"{item['name']}  ({kind}, {len(item['labels'])} labels, {item['format']})", file=out)
        if item["description"]:
            print(f"  {item['description']}", file=out)
        print(f"  labels: {', '.join(item['labels'])}", file=out)
        for split, info in item["splits"].items():
            rows = f"{info['rows']} rows" if isinstance(info["rows"], int) else "size unknown until loaded"
            print(f"  {split:<11} {rows:<26} from {info['from']}", file=out)


def describe_dataset(spec: str, dataset_dir: str, text_column=None, label_column=None) -> dict:
    """What `instructemo sft` would train on from `spec`: its columns, rows and label counts.

    The rows pass the same checks as training's (bad rows, unknown or too-rare
    labels), so a file that would fail there fails here with the same message.
    """
    split = load_split(spec, dataset_dir, text_column=text_column, label_column=label_column)
    entry, _ = entry_for(spec, dataset_dir, text_column, label_column, None, "train")
    counts = Counter(label for record in split.records for label in record.labels)
    space = split.label_space
    return {
        "spec": spec,
        "from": split.origin,
        "text_column": entry.text_column,
        "label_column": entry.label_column,
        "rows": len(split.records),
        "multi_label": space.multi_label,
        "label_counts": {name: counts[name] for name in space.names},
        "texts_with_conflicting_labels": len(split.conflicts),
    }


def hold_out(spec: str, dataset_dir: str, fraction: float, seed: int, out_dir: Path, **columns) -> tuple[Path, Path]:
    """Split a file's checked rows into train and test JSONL files, each label in proportion, seeded.

    The file names carry the source's content hash, the fraction and the seed,
    so a different file or split never lands on an existing name.
    """
    split = load_split(spec, dataset_dir, **columns)
    chosen = set(held_out_indices(split, fraction, seed))
    test = [r for i, r in enumerate(split.records) if i in chosen]
    train = [r for i, r in enumerate(split.records) if i not in chosen]
    if not test or not train:
        raise UserError(f"{spec}: {len(split.records)} rows are too few to hold out {fraction:.0%} as a test split")
    multi = split.label_space.multi_label
    digest = hashlib.sha256(Path(split.origin).read_bytes()).hexdigest()[:8]
    stem = Path(split.origin).stem
    stem = f"{stem if stem.endswith(digest) else f'{stem}-{digest}'}-{round(fraction * 100)}pct-seed{seed}"
    paths = []
    for part, rows in (("train", train), ("test", test)):
        lines = [
            json.dumps(
                {
                    **({"id": r.id} if r.id is not None else {}),
                    "text": r.text,
                    "label": list(r.labels) if multi else r.labels[0],
                },
                ensure_ascii=False,
            )
            for r in rows  # the file's own order
        ]
        path = Path(out_dir) / f"{stem}-{part}.jsonl"
        write_atomic(path, "\n".join(lines) + "\n")
        paths.append(path)
    log.info("held out %d of %d rows of %s as a test split: %s", len(test), len(split.records), spec, paths[1])
    return paths[0], paths[1]


# --- instructemo classify ----------------------------------------------------------


def stdin_texts(stream) -> list[str]:
    """One text per line of `stream`, blank lines included (answered as empty), so the output lines match the
    input lines 1:1; bytes that are not UTF-8 are a one-line error naming the line."""
    if hasattr(stream, "buffer"):
        data = stream.buffer.read()
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = data[: exc.start].count(b"\n") + 1
            raise UserError(
                f"line {line} of standard input is not UTF-8 (byte {data[exc.start]:#04x}); pass UTF-8 text"
            ) from None
    else:  # already text (a caller's stream)
        text = stream.read()
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the newline that ends the last line starts no new one
    return [line.rstrip("\r") for line in lines]


def utf8_texts(texts: list[str]) -> list[str]:
    """Texts given as arguments: a byte that is not UTF-8 arrives as half a surrogate pair, refused in one line."""
    for number, text in enumerate(texts, start=1):
        problem = text_problem(text)
        if problem is not None:
            raise UserError(f"text {number} {problem}; pass UTF-8 text")
    return texts


def load_scorer(cfg: Config) -> Classifier:
    """The run's classifier in score mode, loaded: what classify answers with (probabilities for every label)."""
    return Classifier(dataclasses.replace(cfg, mode="score")).load()


def classify_texts(cfg: Config, texts: Iterable[str], classifier: Classifier | None = None) -> list[dict]:
    """Labels with probabilities (score mode) for each text, in order; an empty text gets no label (labels None).

    `classifier`: one load_scorer(cfg) already loaded (a long-lived caller, the webui, keeps it).
    """
    texts = list(texts)
    todo = [i for i, t in enumerate(texts) if t.strip()]
    if not todo:
        raise UserError(
            'nothing to classify: pass texts after -- (instructemo classify CONFIG.yaml -- "some text"), '
            "with --text, or one per line on stdin"
        )
    classifier = classifier or load_scorer(cfg)
    result = classifier.classify([texts[i].strip() for i in todo])
    names = classifier.space.names
    out = [{"text": text, "labels": None, "probabilities": {}} for text in texts]
    for i, labels, probs in zip(todo, result.labels, result.probabilities):
        ranked = sorted(zip(names, probs), key=lambda item: -item[1])
        out[i].update(labels=list(labels), probabilities={n: round(float(p), 4) for n, p in ranked})
    return out


def print_classified(results: list[dict], out=None) -> None:
    """One line per text: the labels with their probabilities, the top three, the text."""
    out = out or sys.stdout
    for r in results:
        if r["labels"] is None:
            print(f"(empty text: no label)\t\t{r['text']}", file=out)
            continue
        shown = ", ".join(f"{label} {r['probabilities'][label]:.2f}" for label in r["labels"]) or "(no label)"
        top = ", ".join(f"{n} {p:.2f}" for n, p in list(r["probabilities"].items())[:3])
        print(f"{shown}\t[top: {top}]\t{r['text']}", file=out)
