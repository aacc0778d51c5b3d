"""Ensemble weights chosen on dev, judged once on test: does weighting help where equal weights did not?

    python bench/ensemble_weights.py

The members are emotion recipes from bench/recipes.py (measure them first). Each
is evaluated on the validation split (2000 rows, never used by their training)
into <run>/eval-dev. Every weight vector on a small grid, including leaving a
member out, is scored on those dev rows in process, with the rule `instructemo
ensemble` uses. The best by dev accuracy (then macro-F1, then the fewest
members) is applied to the test split once, with `instructemo ensemble
--weights`. Writes bench/results/ensemble_weights_emotion.json.
"""

from __future__ import annotations

import itertools
import json
import math
import shutil
import time
from pathlib import Path

from recipes import ROOT, SAVES, git_commit, recipes, run
from result_file import machine, write_result

from instructemo.data.labels import LabelSpace
from instructemo.evaluate.metrics import score
from instructemo.verbs.ensemble import check_same_rows, combine, read_members

MEMBERS = ("minilm-head-16k-3ep", "smollm2-sft-16k", "gemma3-sft-16k")
GRID = (0, 1, 2, 3)
RESULT = ROOT / "bench" / "results" / "ensemble_weights_emotion.json"
OUTPUT = f"{SAVES}/ensemble-dev-weights"


def dev_command(name: str) -> list[str]:
    recipe = next(r for r in recipes() if r.name == name)
    return [
        *recipe.eval_command(),
        "eval_dataset=emotion:validation",
        f"eval_output_dir={recipe.output_dir}/eval-dev",
    ]


def weight_vectors() -> list[tuple[int, ...]]:
    """Every vector on the grid with at least one member, reduced (2,2,0 is 1,1,0), each once."""
    found = set()
    for w in itertools.product(GRID, repeat=len(MEMBERS)):
        if any(w):
            found.add(tuple(x // math.gcd(*w) for x in w))
    return sorted(found)


def dev_scores(evaluations: list[Path]) -> list[dict]:
    members = read_members(evaluations, None)
    check_same_rows(members)
    space = LabelSpace(members[0].names, multi_label=False)
    gold = [tuple(r["gold"]) for r in members[0].rows]
    scored = []
    for w in weight_vectors():
        chosen = [m for m, x in zip(members, w) if x]
        for m, x in zip(members, w):
            m.weight = float(x) if x else 1.0
        predicted, probabilities = combine(chosen, space)
        metrics = score(gold, predicted, space, probabilities)
        scored.append({"weights": list(w), "accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"]})
    return sorted(scored, key=lambda s: (-s["accuracy"], -s["macro_f1"], sum(x > 0 for x in s["weights"])))


def main() -> None:
    commit = git_commit()
    started = time.perf_counter()
    commands = [dev_command(name) for name in MEMBERS]
    for command in commands:
        run(command)
    scored = dev_scores([ROOT / SAVES / name / "eval-dev" for name in MEMBERS])
    best = scored[0]
    kept = [(name, x) for name, x in zip(MEMBERS, best["weights"]) if x]
    if len(kept) > 1:
        command = [
            "instructemo",
            "ensemble",
            *(f"{SAVES}/{name}" for name, _ in kept),
            "--output",
            OUTPUT,
            "--weights",
            ",".join(str(x) for _, x in kept),
        ]
        shutil.rmtree(ROOT / OUTPUT, ignore_errors=True)
        run(command)
        commands.append(command)
        evaluation = ROOT / OUTPUT
    else:  # a single member won on dev: its own test figures stand
        evaluation = ROOT / SAVES / kept[0][0] / "eval"
    metrics = json.loads((evaluation / "metrics.json").read_text())["metrics"]
    test = {"accuracy": round(metrics["accuracy"], 4), "macro_f1": round(metrics["macro_f1"], 4)}

    def rounded(s: dict) -> dict:
        return {"weights": s["weights"], "accuracy": round(s["accuracy"], 4), "macro_f1": round(s["macro_f1"], 4)}

    singles = [s for s in scored if sum(x > 0 for x in s["weights"]) == 1]
    equal = next(s for s in scored if s["weights"] == [1] * len(MEMBERS))
    write_result(
        RESULT,
        {
            "benchmark": __doc__.split("\n\n")[0],
            "command": "python bench/ensemble_weights.py",
            "commands": [" ".join(c) for c in commands],
            "members": list(MEMBERS),
            "dev_split": "emotion:validation (2000 rows)",
            "chosen_on_dev": rounded(best),
            "test_with_chosen_weights": test,
            "dev_equal_weights": rounded(equal),
            "dev_each_member_alone": [rounded(s) for s in singles],
            "dev_top_10": [rounded(s) for s in scored[:10]],
            "vectors_scored": len(scored),
            "seconds": round(time.perf_counter() - started, 1),
            "commit": commit,
            "machine": machine(),
            "measured": time.strftime("%Y-%m-%d %H:%M"),
        },
    )
    print(json.dumps({"chosen_on_dev": rounded(best), "test": test}), flush=True)


if __name__ == "__main__":
    main()
