"""report.html: one self-contained page (figures embedded as PNG data URIs) that shows where a model goes wrong.

Summary metrics, a confusion-matrix heatmap (single-label) or per-label
tp / fp / fn bars (multi-label), per-class precision / recall / F1 bars, gold
versus predicted label counts, a calibration diagram where there are
probabilities, the training loss curve when the run's log is at hand, and the
most confident mistakes with their texts.
"""

from __future__ import annotations

import functools
from collections import Counter
from pathlib import Path

import jinja2

from instructemo.report.plots import loss_figure, loss_points, png_data_uri, pyplot

SUMMARY_KEYS = (
    "n",
    "accuracy",
    "exact_match",
    "jaccard",
    "macro_f1",
    "micro_f1",
    "weighted_f1",
    "invalid",
    "invalid_rate",
    "ece",
)
WORST_MISTAKES = 25


def confusion_figure(cm: dict, columns: str = "predicted", rows: str = "gold", title: str = "Confusion matrix") -> str:
    plt = pyplot()
    counts = cm["counts"]
    fig, ax = plt.subplots(figsize=(1.2 + 0.7 * len(cm["columns"]), 1.0 + 0.6 * len(cm["labels"])))
    image = ax.imshow(counts, cmap="Blues")
    ax.set_xticks(range(len(cm["columns"])), cm["columns"], rotation=45, ha="right")
    ax.set_yticks(range(len(cm["labels"])), cm["labels"])
    ax.set_xlabel(columns)
    ax.set_ylabel(rows)
    top = max(max(row) for row in counts) or 1
    for i, row in enumerate(counts):
        for j, value in enumerate(row):
            ax.text(j, i, value, ha="center", va="center", color="white" if value > top / 2 else "black", fontsize=8)
    fig.colorbar(image, ax=ax, fraction=0.046)
    ax.set_title(title)
    return png_data_uri(fig)


def grouped_bars(title: str, names: list[str], series: dict[str, list[float]], ylabel: str) -> str:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(max(5.0, 0.6 * len(names) * len(series)), 3.6))
    width = 0.8 / len(series)
    for k, (label, values) in enumerate(series.items()):
        ax.bar([i + k * width for i in range(len(names))], values, width, label=label)
    ax.set_xticks([i + width * (len(series) - 1) / 2 for i in range(len(names))], names, rotation=45, ha="right")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    return png_data_uri(fig)


def loss_image(history: list[dict]) -> str | None:
    return png_data_uri(loss_figure(history)) if loss_points(history) else None


def worst_mistakes(rows: list[dict]) -> list[dict]:
    """Wrong rows, the most confident first (invalid answers, with no confidence, after them)."""
    wrong = [
        r
        for r in rows
        if r.get("gold") is not None and (r["predicted"] is None or sorted(r["predicted"]) != sorted(r["gold"]))
    ]

    def confidence(row):
        probs = row.get("probabilities") or {}
        chosen = [probs[label] for label in row["predicted"] or [] if label in probs]
        return max(chosen) if chosen else -1.0

    return sorted(wrong, key=confidence, reverse=True)[:WORST_MISTAKES]


def reliability_figure(rows: list[dict], names: list[str], multi_label: bool) -> str | None:
    """Confidence against how often it is right, in ten bins (score and head modes; None without probabilities).

    Single-label: the top label's probability against whether it is the gold
    label. Multi-label: every label's probability against whether it is gold.
    """
    pairs = []
    for row in rows:
        probs = row.get("probabilities")
        if not probs or row.get("gold") is None:
            continue
        if multi_label:
            pairs += [(probs[n], n in row["gold"]) for n in names if n in probs]
        else:
            top = max(probs, key=probs.get)
            pairs.append((probs[top], top in row["gold"]))
    if not pairs:
        return None
    bins: dict[int, list[bool]] = {}
    for confidence, right in pairs:
        bins.setdefault(min(int(confidence * 10), 9), []).append(right)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4.6, 3.8))
    centres = [(b + 0.5) / 10 for b in sorted(bins)]
    ax.bar(centres, [sum(v) / len(v) for _, v in sorted(bins.items())], width=0.09, label="share right")
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", label="perfectly calibrated")
    ax.set_xlabel("predicted probability" if multi_label else "top label's probability")
    ax.set_ylabel("share of them right")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title("Calibration")
    ax.legend(fontsize=8)
    return png_data_uri(fig)


def report_parts(rows: list[dict], metrics: dict, history: list[dict] | None = None) -> dict:
    """What report.html shows, for any page that shows it (the webui too): summary, figures, mistakes."""
    names = list(metrics["per_class"])
    figures = []
    if "confusion_matrix" in metrics:
        figures.append(("Confusion matrix", confusion_figure(metrics["confusion_matrix"])))
    elif "label_confusion" in metrics:
        lc = metrics["label_confusion"]
        figures.append(
            (
                "Per-label errors",
                grouped_bars(
                    "Per-label counts",
                    names,
                    {
                        "true positives": [lc[n]["tp"] for n in names],
                        "false positives": [lc[n]["fp"] for n in names],
                        "false negatives": [lc[n]["fn"] for n in names],
                    },
                    "rows",
                ),
            )
        )
    per_class = metrics["per_class"]
    figures.append(
        (
            "Per-class scores",
            grouped_bars(
                "Precision, recall and F1 per class",
                names,
                {
                    "precision": [per_class[n]["precision"] for n in names],
                    "recall": [per_class[n]["recall"] for n in names],
                    "F1": [per_class[n]["f1"] for n in names],
                },
                "score",
            ),
        )
    )
    gold = Counter(label for r in rows for label in r.get("gold") or [])
    predicted = Counter(label for r in rows for label in r.get("predicted") or [])
    figures.append(
        (
            "Label distribution",
            grouped_bars(
                "Gold versus predicted label counts",
                names,
                {"gold": [gold[n] for n in names], "predicted": [predicted[n] for n in names]},
                "rows",
            ),
        )
    )
    calibration = reliability_figure(rows, names, "label_confusion" in metrics)
    if calibration:
        figures.append(("Calibration", calibration))
    loss = loss_image(history or [])
    if loss:
        figures.append(("Training loss", loss))

    mistakes = [
        {
            "gold": ", ".join(r["gold"]) or "(none)",
            "predicted": ", ".join(r["predicted"])
            if r["predicted"] is not None
            else "invalid: " + str(r.get("generation", "")),
            "probability": max((r.get("probabilities") or {}).get(label, 0.0) for label in r["predicted"])
            if r.get("probabilities") and r["predicted"]
            else None,
            "text": r["text"],
        }
        for r in worst_mistakes(rows)
    ]
    return {"summary": {k: metrics[k] for k in SUMMARY_KEYS if k in metrics}, "figures": figures, "mistakes": mistakes}


def render(rows: list[dict], metrics: dict, context: dict, history: list[dict] | None = None) -> str:
    return _template("report.html.j2").render(
        title=f"instructemo report: {context.get('model', '')}",
        context=context,
        unflagged=metrics.get("unflagged"),
        **report_parts(rows, metrics, history),
    )


def render_predictions(rows: list[dict], names: list[str], context: dict) -> str:
    """predict's report: what was predicted how often, and the least sure answers (no gold to compare with)."""
    summary = PredictionSummary()
    summary.add(rows)
    return summary.render(names, context)


class PredictionSummary:
    """What predict's report shows, gathered chunk by chunk in constant memory (and saved to resume from)."""

    def __init__(self, counts: dict | None = None, unsure: list | None = None, blank: list | None = None):
        self.counts = Counter(counts or {})
        self.unsure = unsure or []  # the least confident rows, most doubtful first
        self.blank = blank or []  # the first rows that got no label

    def add(self, rows: list[dict]) -> None:
        """Rows in file order, each {id, text, predicted, confidence}."""
        self.counts.update(label for r in rows for label in r["predicted"] or [])
        scored = [r for r in rows if r.get("confidence") is not None]
        # sorted() is stable: among equal confidences the earlier row stays first, as in one sort of the whole file
        self.unsure = sorted(self.unsure + scored, key=lambda r: r["confidence"])[:WORST_MISTAKES]
        self.blank = (self.blank + [r for r in rows if r["predicted"] is None])[:WORST_MISTAKES]

    def state(self) -> dict:
        return {"counts": dict(self.counts), "unsure": self.unsure, "blank": self.blank}

    def render(self, names: list[str], context: dict) -> str:
        return _template("predictions.html.j2").render(
            title="instructemo predictions",
            context=context,
            counts_figure=grouped_bars(
                "Predicted label counts", names, {"predicted": [self.counts[n] for n in names]}, "rows"
            ),
            unsure=self.unsure,
            blank=self.blank,
        )


def render_tune_report(title: str, rows: list[dict], best: dict | None, figures: list, context: dict) -> str:
    """tune's report.html: the study, the best trial, Optuna's plots and every trial."""
    return _template("tune.html.j2").render(title=title, rows=rows, best=best, figures=figures, context=context)


@functools.cache
def _environment() -> jinja2.Environment:
    # autoescape: every text, label and setting shown is escaped, so a tweet holding markup stays text.
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )


def _template(name: str) -> jinja2.Template:
    return _environment().get_template(name)


AUDIT_ROWS_SHOWN = 100


def render_audit(summary: dict, issues: list[dict]) -> str:
    """audit.html: per split, the flagged share per label, the given labels against the suggested ones, the
    estimated noise, and the flagged rows the least likely first."""
    labels = summary["audit"]["labels"]
    multi_label = summary["audit"]["multi_label"]
    figures = {}
    for role, part in summary["splits"].items():
        shares = [part["per_class"][n]["flagged_share"] for n in labels]
        figures[role] = [
            (
                "Share of each label's rows flagged",
                grouped_bars(f"{role}: flagged share per label", labels, {role: shares}, "share flagged"),
            )
        ]
        if not multi_label and part["flagged"]:
            counts = [[part["given_vs_suggested"][g][s] for s in labels] for g in labels]
            cm = {"labels": labels, "columns": labels, "counts": counts}
            figures[role].append(
                (
                    "Flagged rows: given label (rows) against suggested (columns)",
                    confusion_figure(cm, "suggested", "given", "Flagged rows: given against suggested"),
                )
            )
    context = {k: v for k, v in summary["audit"].items() if k not in ("labels", "multi_label")}
    context.update(seconds=summary["seconds"], rows_per_second=summary["rows_per_second"])
    return _template("audit.html.j2").render(
        title=f"Label audit of {summary['audit']['dataset']}",
        context=context,
        splits=summary["splits"],
        figures=figures,
        labels=labels,
        multi_label=multi_label,
        issues=issues[:AUDIT_ROWS_SHOWN],
        total=len(issues),
    )
