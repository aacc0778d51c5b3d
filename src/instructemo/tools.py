"""Small verbs for everyday use: `datasets` (what can be trained on), `classify` (a quick answer)."""

from __future__ import annotations

import dataclasses
import logging
import sys
from typing import Iterable

from .config import Config
from .data import load_registry, load_split
from .errors import UserError
from .infer.classifier import Classifier
from .readers import find_file

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


# --- instructemo classify ----------------------------------------------------------


def classify_texts(cfg: Config, texts: Iterable[str]) -> list[dict]:
    """Labels with probabilities (score mode) for each text, in order; an empty text gets no label (labels None)."""
    texts = list(texts)
    todo = [i for i, t in enumerate(texts) if t.strip()]
    if not todo:
        raise UserError(
            'nothing to classify: pass texts after -- (instructemo classify CONFIG.yaml -- "some text"), '
            "with --text, or one per line on stdin"
        )
    classifier = Classifier(dataclasses.replace(cfg, mode="score")).load()
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
