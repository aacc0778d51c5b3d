"""Small verbs for everyday use: `datasets` (what can be trained on), `classify` (a quick answer),
`export` (a standalone merged model)."""

from __future__ import annotations

import dataclasses
import logging
import sys
from pathlib import Path
from typing import Iterable

from .config import Config
from .data import load_registry, load_split
from .errors import UserError
from .infer.classifier import Classifier, find_adapter, trained_label_space
from .infer.dense import DenseEngine
from .infer.hf import load_for_inference
from .models import resolve_model_path, save_atomically
from .readers import find_file
from .rundir import LABEL_SPACE_FILE, THRESHOLDS_FILE, saved_stage

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


# --- instructemo export ------------------------------------------------------------


def export_model(cfg: Config, output: Path, gguf: bool = False) -> Path:
    """The base with the trained adapter merged in, saved as a standalone HF directory (safetensors)."""
    if gguf:
        raise UserError(
            "--gguf: no well-kept GGUF converter ships with instructemo; export without --gguf, then run "
            "llama.cpp's convert_hf_to_gguf.py on the exported directory"
        )
    adapter = find_adapter(cfg)
    if adapter is None:
        raise UserError(
            f"nothing to export: no trained adapter or model in {cfg.output_dir}; run instructemo sft first"
        )
    if output.exists() and not output.is_dir():
        raise UserError(f"--output {output} is a file; name a new directory for the exported model")
    if output.exists() and any(output.iterdir()):
        raise UserError(f"--output {output} is not empty; choose a new directory")
    base = resolve_model_path(cfg.model_name_or_path)
    if saved_stage(adapter, cfg.stage) == "cls":
        engine = DenseEngine(
            dataclasses.replace(cfg, backend="hf"), base, adapter, trained_label_space(cfg, adapter)[0], bf16=False
        )
        model, tokenizer = engine.model, engine.tokenizer
    else:
        model, tokenizer = load_for_inference(
            base,
            adapter,
            flash_attn="eager",
            bf16=False,
            trust_remote_code=cfg.trust_remote_code,
            allow_pickle=cfg.allow_pickle_weights,
        )

    def write(staging: Path) -> None:
        model.save_pretrained(staging)  # safetensors
        tokenizer.save_pretrained(staging)
        if (adapter / LABEL_SPACE_FILE).is_file():
            (staging / LABEL_SPACE_FILE).write_text((adapter / LABEL_SPACE_FILE).read_text())
        for extra in (THRESHOLDS_FILE,):
            if (adapter / extra).is_file():
                (staging / extra).write_text((adapter / extra).read_text())

    if output.exists():
        output.rmdir()
    save_atomically(output, write)
    log.info("exported %s merged into %s to %s", adapter, cfg.model_name_or_path, output)
    return output
