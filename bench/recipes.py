"""Recipes measured against the field's numbers: train on this CPU, judge once on the held-out test split.

Each recipe is one `instructemo sft` and one `instructemo generate-eval`, run as
a user runs them (their own processes), with the exact commands recorded. The
result file keeps every recipe ever measured, not only the winner: running a
subset (--only) replaces those entries and leaves the others, each with the
commit and machine it was measured on.

    python bench/recipes.py --only minilm-head-16k-3ep,smollm2-head-16k
    python bench/recipes.py --group curve      # the learning curve on emotion

Writes bench/results/recipes.json, recipes.md (the tables) and
learning_curve_emotion.png.

Field numbers on the dair-ai emotion test split: RoBERTa-base 0.931 accuracy,
DistilBERT 0.927, Llama-3-8B + LoRA 0.926 (the notebook this project grew from).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from result_file import machine, project_relative, write_result

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "recipes.json"
TABLE = ROOT / "bench" / "results" / "recipes.md"
CURVE_PLOT = ROOT / "bench" / "results" / "learning_curve_emotion.png"
SAVES = "saves/bench-recipes"
FIELD = {"RoBERTa-base": 0.931, "DistilBERT": 0.927, "Llama-3-8B + LoRA": 0.926}
CURVE_ROWS = (500, 1000, 2000, 4000, 8000, 16000)


@dataclass
class Recipe:
    name: str
    dataset: str
    model: str
    config: str
    overrides: list[str] = field(default_factory=list)
    eval_overrides: list[str] = field(default_factory=list)
    group: str = "recipes"
    rows: int | None = None  # training rows (None: the whole split)
    epochs: float = 1.0
    note: str = ""
    train: bool = True  # False: the base instruct model, prompted (zero- or few-shot)
    members: tuple[str, ...] = ()  # an ensemble of these recipes' evaluations (instructemo ensemble)

    @property
    def output_dir(self) -> str:
        return f"{SAVES}/{self.name}"

    @property
    def mode(self) -> str:
        if self.members:
            return "ensemble / mean probability"
        stage = "head" if "stage: head" in (ROOT / self.config).read_text() else "sft"
        if not self.train:
            stage = "prompted"
        settings = dict(o.split("=", 1) for o in [*self.overrides, *self.eval_overrides])
        mode = settings.get("mode", "head" if stage == "head" else "generate")
        shots = int(settings.get("few_shot", 0))
        if not self.train:
            mode += f", {shots}-shot" + (f" {settings.get('few_shot_selection', 'random')}" if shots else "")
        return f"{stage} / {mode}"

    def sft_command(self) -> list[str]:
        rows = f"max_samples={self.rows}" if self.rows else "max_samples=null"
        return [
            "instructemo",
            "sft",
            self.config,
            f"output_dir={self.output_dir}",
            rows,
            f"num_train_epochs={self.epochs:g}",
            *self.overrides,
            "overwrite_output_dir=true",
        ]

    def eval_command(self) -> list[str]:
        rows = f"max_samples={self.rows}" if self.rows else "max_samples=null"
        trained = [rows, f"num_train_epochs={self.epochs:g}"] if self.train else ["max_samples=null"]
        return [
            "instructemo",
            "generate-eval",
            self.config,
            f"output_dir={self.output_dir}",
            *trained,
            *self.overrides,
            *self.eval_overrides,
        ]

    def ensemble_command(self) -> list[str]:
        return ["instructemo", "ensemble", *(f"{SAVES}/{m}" for m in self.members), "--output", self.output_dir]

    def commands(self) -> list[list[str]]:
        if self.members:
            return [self.ensemble_command()]
        return [self.sft_command(), self.eval_command()] if self.train else [self.eval_command()]


IMDB = ["dataset=imdb", "eval_dataset=imdb:test"]
GOEMOTIONS = ["dataset=goemotions", "eval_dataset=goemotions:test"]
SEMEVAL = ["dataset=semeval2018_ec", "eval_dataset=semeval2018_ec:dev"]
MINILM = ("all-MiniLM-L6 (22M), full fine-tuning", "examples/minilm_head_emotion.yaml")
SMOLLM2_CLS = ("SmolLM2-135M-Instruct, LoRA r16 + score head", "examples/smollm2_head_emotion.yaml")
SMOLLM2 = ("SmolLM2-135M-Instruct, LoRA r16 (generative)", "examples/smollm2_emotion.yaml")
GEMMA3 = ("Gemma 3 270M (base), LoRA r16 (generative)", "examples/gemma3_emotion.yaml")


def ensemble(name: str, description: str, *members: str) -> Recipe:
    """An emotion ensemble of recipes measured before, their probabilities averaged with equal weights."""
    return Recipe(
        name, "emotion", f"{description}, probabilities averaged", MINILM[1], train=False, epochs=0, members=members
    )


def recipes() -> list[Recipe]:
    found = [
        Recipe("minilm-head-16k-3ep", "emotion", *MINILM, epochs=3),
        # Five epochs, keeping the epoch that classifies all 2000 dev rows best (select_best on a head).
        Recipe(
            "minilm-head-16k-5ep-best",
            "emotion",
            *MINILM,
            overrides=["learning_rate=2e-4", "select_best=true", "max_select_samples=2000"],
            epochs=5,
        ),
        Recipe("smollm2-head-16k", "emotion", *SMOLLM2_CLS),
        Recipe("smollm2-sft-16k", "emotion", *SMOLLM2, eval_overrides=["mode=score"]),
        # The larger embedded decoder: on 1000 rows it beat SmolLM2 (0.772 against 0.668, bench/families.py).
        Recipe("gemma3-sft-16k", "emotion", *GEMMA3, eval_overrides=["mode=score"]),
        # Leaderboard practice: a dense head and a generative model err differently; equal weights, so nothing
        # is tuned on test. Training time is the members' together.
        ensemble("ensemble-minilm-smollm2-16k", "MiniLM cls + SmolLM2 sft", "minilm-head-16k-3ep", "smollm2-sft-16k"),
        ensemble("ensemble-minilm-gemma3-16k", "MiniLM cls + Gemma 3 sft", "minilm-head-16k-3ep", "gemma3-sft-16k"),
        ensemble(
            "ensemble-minilm-smollm2-gemma3-16k",
            "MiniLM cls + SmolLM2 sft + Gemma 3 sft",
            "minilm-head-16k-3ep",
            "smollm2-sft-16k",
            "gemma3-sft-16k",
        ),
        # IMDB: fast.ai's 1000-review sample, 800 train and 200 test reviews (about 250 words each).
        Recipe("imdb-minilm-head-3ep", "imdb", *MINILM, overrides=IMDB, epochs=3),
        Recipe(
            "imdb-smollm2-sft", "imdb", *SMOLLM2, overrides=[*IMDB, "cutoff_len=512"], eval_overrides=["mode=score"]
        ),
        # Multi-label: a cls run picks per-label thresholds on the dataset's dev split after training.
        # GoEmotions is judged on test (the paper's BERT: 0.46 macro-F1). SemEval-2018 E-c ships no test
        # labels, so it is judged on dev, the split its thresholds were chosen on: held_out says so.
        Recipe("goemotions-minilm-head-2ep", "goemotions", *MINILM, overrides=GOEMOTIONS, epochs=2),
        Recipe("semeval-minilm-head-3ep", "semeval2018_ec", *MINILM, overrides=SEMEVAL, epochs=3),
    ]
    # The embedded instruct model without training, on the first 500 emotion test rows and the 200 IMDB test reviews.
    emotion = ["max_eval_samples=500", "mode=score"]
    imdb = ["dataset=imdb", "eval_dataset=imdb:test", "cutoff_len=1024", "mode=score", "per_device_eval_batch_size=8"]
    for name, prompting in (
        ("0shot", []),
        ("1shot-random", ["few_shot=1"]),
        ("4shot-random", ["few_shot=4"]),
        ("1shot-similar", ["few_shot=1", "few_shot_selection=similar"]),
    ):
        for dataset, settings in (("emotion", emotion), ("imdb", imdb)):
            if dataset == "imdb" and name == "4shot-random":
                continue  # eight reviews of ~250 words before each one: past what this CPU does in minutes
            found.append(
                Recipe(
                    f"prompted-{dataset}-{name}",
                    dataset,
                    "SmolLM2-135M-Instruct, no training",
                    SMOLLM2[1],
                    eval_overrides=[*settings, *prompting],
                    group="prompting",
                    train=False,
                    epochs=0,
                )
            )
    for rows in CURVE_ROWS[:-1]:  # 16000: minilm-head-16k-3ep
        found.append(Recipe(f"curve-minilm-{rows}", "emotion", *MINILM, group="curve", rows=rows, epochs=3))
    for rows in CURVE_ROWS[:-1]:  # 16000: smollm2-sft-16k
        found.append(
            Recipe(
                f"curve-smollm2-{rows}", "emotion", *SMOLLM2, eval_overrides=["mode=score"], group="curve", rows=rows
            )
        )
    return found


def run(command: list[str]) -> float:
    exe = str(Path(sys.executable).with_name("instructemo"))
    print("$", " ".join(command), flush=True)
    started = time.perf_counter()
    subprocess.run([exe, *command[1:]], cwd=ROOT, check=True)
    return round(time.perf_counter() - started, 1)


def read_results() -> dict:
    return json.loads(RESULTS.read_text()) if RESULTS.is_file() else {"recipes": {}}


def git_commit() -> str:
    return subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()


def measure(recipe: Recipe) -> dict:
    out = ROOT / recipe.output_dir
    commit = git_commit()  # the code measured: taken before the run, whatever is committed during it
    shutil.rmtree(out, ignore_errors=True)
    if recipe.members:
        return measure_ensemble(recipe, commit)
    wall = {"sft": run(recipe.sft_command())} if recipe.train else {}
    wall["generate_eval"] = run(recipe.eval_command())  # a prompted recipe: the base model, output_dir holds no run
    train = (
        json.loads((out / "train_results.json").read_text()) if recipe.train else {"train_rows": 0, "train_seconds": 0}
    )
    evaluation = json.loads((out / "eval" / "metrics.json").read_text())
    cost = {
        "train_rows": train["train_rows"],
        "epochs": recipe.epochs,
        "train_minutes": round(train["train_seconds"] / 60, 1),
        "predict_examples_per_second": evaluation["examples_per_second"],
    }
    return entry(recipe, commit, evaluation, cost, wall)


def measure_ensemble(recipe: Recipe, commit: str) -> dict:
    """An ensemble of recipes measured before: its cost is theirs (training, and every member's inference)."""
    measured = read_results()["recipes"]
    missing = [m for m in recipe.members if m not in measured]
    if missing:
        raise SystemExit(
            f"{recipe.name}: measure its members first: python bench/recipes.py --only {','.join(missing)}"
        )
    members = [measured[m] for m in recipe.members]
    wall = {"ensemble": run(recipe.ensemble_command())}
    evaluation = json.loads((ROOT / recipe.output_dir / "metrics.json").read_text())
    rows = [json.loads(line) for line in (ROOT / recipe.output_dir / "predictions.jsonl").read_text().splitlines()]
    cost = {
        "members": list(recipe.members),
        "agreement": agreement(rows),
        "train_rows": max(m["train_rows"] for m in members),
        "epochs": " + ".join(f"{m['epochs']:g}" for m in members),
        "train_minutes": round(sum(m["train_minutes"] for m in members), 1),
        "predict_examples_per_second": round(1 / sum(1 / m["predict_examples_per_second"] for m in members), 2),
    }
    return entry(recipe, commit, evaluation, cost, wall)


def agreement(rows: list[dict]) -> dict:
    """Where an ensemble can gain: the rows its members disagree on, and how many of those it gets right.

    A row is contested when some members are right and some wrong; a perfect chooser would get every
    contested row right (oracle_accuracy). Rows every member gets wrong with the same label are beyond
    any combination of these members: on hashtag-labelled data they are often the label's error.
    """
    n = len(rows)
    right = [[m == r["gold"] for m in r["members"]] for r in rows]
    all_wrong = [r for r, ok in zip(rows, right) if not any(ok)]
    same_label = [r for r in all_wrong if all(m == r["members"][0] for m in r["members"])]
    contested = [r for r, ok in zip(rows, right) if any(ok) and not all(ok)]
    won = sum(r["predicted"] == r["gold"] for r in contested)
    return {
        "all_right": round(sum(all(ok) for ok in right) / n, 4),
        "all_wrong": round(len(all_wrong) / n, 4),
        "all_wrong_same_label": round(len(same_label) / n, 4),
        "contested_rows": len(contested),
        "contested_won": won,
        "oracle_accuracy": round(1 - len(all_wrong) / n, 4),
    }


def agreement_note(a: dict) -> str:
    return (
        f"every member is wrong on {a['all_wrong']:.2%} of the rows ({a['all_wrong_same_label']:.2%} with the same "
        f"label); on {a['contested_rows']} rows some are right and some wrong, and averaging gets {a['contested_won']} "
        f"of those right: a perfect chooser would reach {a['oracle_accuracy']}"
    )


def entry(recipe: Recipe, commit: str, evaluation: dict, cost: dict, wall: dict) -> dict:
    """One recipe's line in recipes.json: its scores from the evaluation's metrics.json, its cost, how it was run."""
    metrics = evaluation["metrics"]
    return {
        "name": recipe.name,
        "group": recipe.group,
        "dataset": recipe.dataset,
        "eval_split": evaluation["eval_dataset"],
        "model": recipe.model,
        "stage_mode": recipe.mode,
        **{k: v for k, v in cost.items() if k not in ("train_minutes", "predict_examples_per_second")},
        "accuracy": round(metrics["accuracy"], 4) if "accuracy" in metrics else None,
        "macro_f1": round(metrics["macro_f1"], 4),
        "jaccard": round(metrics["jaccard"], 4) if "jaccard" in metrics else None,
        "invalid_rate": metrics["invalid_rate"],
        "per_class_f1": {n: round(v["f1"], 4) for n, v in metrics["per_class"].items()},
        "train_minutes": cost["train_minutes"],
        "predict_examples_per_second": cost["predict_examples_per_second"],
        "wall_seconds": wall,
        "eval_rows": metrics["n"],
        "held_out": held_out(evaluation["held_out"], evaluation["also_used_for"], evaluation["texts_in_training"]),
        "texts_in_training": evaluation["texts_in_training"],
        "commands": [" ".join(c) for c in recipe.commands()],
        "note": "; ".join(
            filter(None, [recipe.note, agreement_note(cost["agreement"]) if "agreement" in cost else ""])
        ),
        "commit": commit,
        "machine": machine(),
        "measured": time.strftime("%Y-%m-%d %H:%M"),
    }


def held_out(held: bool, also_used_for: list[str], texts_in_training: int | None) -> str:
    """The table's cell: whether the judged rows served for nothing else, and how many texts training also saw."""
    cell = "yes" if held else "no: also " + " and ".join(also_used_for)
    plural = "s" if texts_in_training != 1 else ""
    return cell + (f" ({texts_in_training} text{plural} also in training)" if texts_in_training else "")


def table(entries: list[dict]) -> str:
    columns = ["dataset", "model", "stage_mode", "train_rows", "epochs", "eval_rows", "accuracy", "macro_f1", "jaccard"]
    columns += ["held_out", "train_minutes", "predict_examples_per_second"]
    lines = [
        "| recipe | " + " | ".join(columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    for e in entries:
        cells = [
            "" if e.get(c) is None else (f"{e[c]:.4f}" if c in ("accuracy", "macro_f1", "jaccard") else str(e[c]))
            for c in columns
        ]
        lines.append(f"| {e['name']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown(result: dict) -> str:
    entries = list(result["recipes"].values())
    field_line = ", ".join(f"{k} {v}" for k, v in FIELD.items())
    parts = [
        "# Recipes on this CPU, judged once on each dataset's held-out split",
        "",
        f"Field numbers on the dair-ai emotion test split (accuracy): {field_line}.",
        "",
        "## Recipes",
        "",
        "Multi-label rows (GoEmotions, SemEval): accuracy is exact match; jaccard is the SemEval-2018 E-c score.",
        "held_out says what else, if anything, the judged rows served for.",
        "",
        table([e for e in entries if e["group"] == "recipes"]),
        "",
        SEMEVAL_GENERATIVE,
        "",
        "## Prompting the instruct model without training (zero- and few-shot; emotion: first 500 test rows)",
        "",
        table([e for e in entries if e["group"] == "prompting"]),
        "",
        "## Learning curve on emotion (test split, 2000 rows)",
        "",
        table(sorted((e for e in entries if e["group"] == "curve" or e["name"] in CURVE_ENDS), key=_curve_key)),
        "",
        "Every command is in recipes.json, with the commit and machine each was measured on.",
    ]
    notes = [f"- {e['name']}: {e['note']}" for e in entries if e.get("note")]
    if notes:
        parts += ["", "Notes:", "", *notes]
    return "\n".join(parts) + "\n"


# Measured before this bench existed, with its own script's commands (bench/results/semeval_smollm2.json).
SEMEVAL_GENERATIVE = (
    "SemEval-2018 E-c, generative: SmolLM2-135M-Instruct LoRA r16, 1 epoch on the 6838 train tweets, checkpoint "
    "chosen on 300 dev tweets (so dev is not wholly held out), generate mode: dev Jaccard 0.518, macro-F1 0.511, "
    "0 invalid, 54 min of training (bench/results/semeval_smollm2.json)."
)

# The 16k ends of the curve are recipes of their own.
CURVE_ENDS = {"minilm-head-16k-3ep": "MiniLM (dense)", "smollm2-sft-16k": "SmolLM2 (generative)"}


def _curve_key(entry: dict) -> tuple:
    return (entry["model"], entry["train_rows"])


def curve_plot(result: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[str, list[tuple[int, float, float]]] = {}
    for e in result["recipes"].values():
        if e["dataset"] != "emotion" or not (e["group"] == "curve" or e["name"] in CURVE_ENDS):
            continue
        label = "MiniLM cls (dense, 3 epochs)" if "MiniLM" in e["model"] else "SmolLM2 sft (generative, 1 epoch)"
        series.setdefault(label, []).append((e["train_rows"], e["accuracy"], e["macro_f1"]))
    if not series:
        return
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), dpi=110)
    for label, points in series.items():
        points.sort()
        rows = [p[0] for p in points]
        for ax, k in zip(axes, (1, 2)):
            ax.plot(rows, [p[k] for p in points], marker="o", label=label)
    for ax, title in zip(axes, ("accuracy", "macro-F1")):
        ax.set_xscale("log")
        ax.set_xlabel("training rows")
        ax.set_title(f"dair-ai emotion test {title}")
        ax.grid(alpha=0.3)
    axes[0].axhline(FIELD["RoBERTa-base"], color="grey", linestyle="--", label="RoBERTa-base 0.931")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(CURVE_PLOT)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="Comma-separated recipe names.")
    parser.add_argument("--group", choices=("recipes", "curve", "prompting", "all"), default="recipes")
    parser.add_argument("--list", action="store_true", help="List the recipes and their commands.")
    parser.add_argument("--render", action="store_true", help="Rewrite recipes.md and the plot from recipes.json.")
    args = parser.parse_args()
    chosen = recipes()
    if args.only:
        names = args.only.split(",")
        unknown = set(names) - {r.name for r in chosen}
        if unknown:
            raise SystemExit(f"unknown recipe(s) {sorted(unknown)}; see --list")
        chosen = [r for r in chosen if r.name in names]
    elif args.group != "all":
        chosen = [r for r in chosen if r.group == args.group]
    if args.list:
        for r in chosen:
            print(r.name, "|", " | ".join(" ".join(c) for c in r.commands()))
        return
    if args.render:
        result = read_results()
        result["table_markdown"] = markdown(result)
        write_result(RESULTS, result)
        TABLE.write_text(project_relative(result["table_markdown"]))
        curve_plot(result)
        return
    for recipe in chosen:
        entry = measure(recipe)
        entry["bench_command"] = "python bench/recipes.py " + (f"--only {recipe.name}")
        # Read again: another recipes.py may have written its entries while this one trained.
        result = read_results()
        result["benchmark"] = __doc__.split("\n\n")[0]
        result["field"] = FIELD
        result["recipes"][recipe.name] = entry
        result["table_markdown"] = markdown(result)
        write_result(RESULTS, result)  # after each recipe: a long run keeps what it measured
        TABLE.write_text(project_relative(result["table_markdown"]))
        curve_plot(result)
        print(json.dumps({k: entry[k] for k in ("name", "accuracy", "macro_f1", "train_minutes")}), flush=True)


if __name__ == "__main__":
    main()
