"""Inputs for the report pages, and the normalised form their HTML is compared in (see test_report_pages.py)."""

from __future__ import annotations

import re
from html.parser import HTMLParser

from instructemo.data.labels import LabelSpace
from instructemo.evaluate.metrics import score

HOSTILE = "<script>alert(\"x\")</script> & <b>bold</b> 'quoted'"


def single_label_case():
    space = LabelSpace(("joy", "sadness", "anger"))
    gold = [("joy",), ("sadness",), ("anger",), ("joy",), ("sadness",)]
    predicted = [("joy",), ("joy",), None, ("anger",), ("sadness",)]
    probabilities = None
    rows = [
        {
            "id": str(i),
            "source": f"f.txt:{i}",
            "text": t,
            "gold": list(g),
            "generation": a,
            "predicted": list(p) if p is not None else None,
        }
        for i, (t, g, p, a) in enumerate(
            zip(
                ["so happy", HOSTILE, "grr <angry>", "yay & more", "down"],
                gold,
                predicted,
                ["joy", "joy", "<no idea>", "anger", "sadness"],
            )
        )
    ]
    metrics = score(gold, predicted, space, probabilities)
    context = {"model": "tiny <model>", "adapter": None, "eval_dataset": "emotion:test", "held_out": True}
    history = [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5}, {"step": 3, "loss": 1.2}]
    return rows, metrics, context, history


def multi_label_case():
    import numpy as np

    space = LabelSpace(("anger", "joy", "fear"), multi_label=True)
    gold = [("anger",), ("joy", "fear"), (), ("fear",)]
    predicted = [("anger", "joy"), ("joy",), (), ("anger",)]
    probabilities = np.array([[0.9, 0.6, 0.1], [0.2, 0.8, 0.4], [0.1, 0.2, 0.3], [0.7, 0.1, 0.45]])
    rows = [
        {
            "id": str(i),
            "text": t,
            "gold": list(g),
            "generation": None,
            "predicted": list(p),
            "probabilities": dict(zip(space.names, map(float, probs))),
        }
        for i, (t, g, p, probs) in enumerate(zip(["mad", HOSTILE, "meh", "scared"], gold, predicted, probabilities))
    ]
    metrics = score(gold, predicted, space, probabilities)
    context = {"model": "tiny", "mode": "score", "also_used_for": ["threshold calibration"]}
    return rows, metrics, context, None


def predictions_case():
    rows = [
        {"id": "a1", "text": "fine", "predicted": ["joy"], "confidence": 0.91},
        {"id": "<a2>", "text": HOSTILE, "predicted": ["anger"], "confidence": 0.42},
        {"id": "a3", "text": "   ", "predicted": None, "confidence": None},
    ]
    return rows, ["joy", "sadness", "anger"], {"model": "tiny", "input": "in.csv", "output": "out & co.csv"}


class _Structure(HTMLParser):
    """Tags, attributes and text in document order; data URIs stand for their figure, blank text is dropped."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.items: list[str] = []

    def handle_starttag(self, tag, attrs):
        shown = [(k, "data:image/png" if (v or "").startswith("data:image/png") else v) for k, v in attrs]
        self.items.append(f"<{tag} {shown}>")

    def handle_endtag(self, tag):
        self.items.append(f"</{tag}>")

    def handle_data(self, data):
        text = re.sub(r"\s+", " ", data).strip()
        if text:
            self.items.append(text)


def structure(page: str) -> str:
    """The page as one line per tag or text: what a reader sees, not how the source is laid out."""
    parser = _Structure()
    parser.feed(page)
    return "\n".join(parser.items) + "\n"
