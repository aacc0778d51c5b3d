"""Speed of this checkout against an earlier commit, on this machine, in alternating order.

A change to the training or inference path must not slow it down. Absolute
figures move with the machine (a shared 2-core host can run at half speed for
hours), so this runs the same short command with both versions, one after the
other, in alternating order, and records each run's own figures:

- training (default): `instructemo sft` on the first 320 rows, its train_results.json;
- inference (--eval backend:mode,...): `instructemo generate-eval` of a trained run
  (--adapter) on the first 500 test rows, its metrics.json (inference alone is timed).

    python bench/ab_train.py --base e1273a7 [--rounds 2] [key=value ...]
    python bench/ab_train.py --base e1273a7 --eval hf:score,hf:generate --adapter saves/bench-emotion

The base commit is checked out as a git worktree under .scratch/ and run with
this checkout's environment. Writes bench/results/ab_train.json (ab_infer.json with --eval).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

from result_file import machine, write_result

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
CONFIG = "examples/smollm2_emotion.yaml"
DEFAULT_OVERRIDES = ["max_samples=320", "logging_steps=5"]
EVAL_ROWS = 500


def run_cli(source: Path, arguments: list[str]) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": str(source / "src"),
        "INSTRUCTEMO_SHARED_DATA": os.environ.get("INSTRUCTEMO_SHARED_DATA", str(ROOT.parent / "shared" / "data")),
    }
    command = [sys.executable, "-m", "instructemo.cli", *arguments]
    subprocess.run(command, cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def train_once(source: Path, output_dir: Path, overrides: list[str]) -> dict:
    shutil.rmtree(output_dir, ignore_errors=True)
    run_cli(source, ["sft", CONFIG, f"output_dir={output_dir}", *overrides])
    result = json.loads((output_dir / "train_results.json").read_text())
    return {
        "train_seconds": result["train_seconds"],
        "global_steps": result["global_steps"],
        "train_examples_per_second": result["train_examples_per_second"],
        # before mean_loss existed, final_loss held the run's mean loss
        "mean_loss": result.get("mean_loss", result.get("final_loss")),
    }


def eval_once(source: Path, adapter: Path, evaluation: str, out: Path, overrides: list[str]) -> dict:
    backend, mode = evaluation.split(":")
    shutil.rmtree(out, ignore_errors=True)
    run_cli(
        source,
        ["generate-eval", CONFIG, f"output_dir={adapter}", f"eval_output_dir={out}", f"backend={backend}",
         f"mode={mode}", f"max_eval_samples={EVAL_ROWS}", *overrides],
    )  # fmt: skip
    metrics = json.loads((out / "metrics.json").read_text())
    return {
        "inference_seconds": metrics["inference_seconds"],
        "examples_per_second": metrics["examples_per_second"],
        "accuracy": metrics["metrics"]["accuracy"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="Commit to compare against.")
    parser.add_argument("--rounds", type=int, default=2, help="Runs of each version (alternating order).")
    parser.add_argument("--eval", help="Time generate-eval instead of sft: comma-separated backend:mode runs.")
    parser.add_argument("--adapter", default="saves/bench-emotion", help="With --eval: the trained run to evaluate.")
    parser.add_argument("overrides", nargs="*", help=f"Config overrides (sft default: {' '.join(DEFAULT_OVERRIDES)}).")
    args = parser.parse_args()
    overrides = args.overrides or ([] if args.eval else DEFAULT_OVERRIDES)
    scratch = ROOT / ".scratch" / "ab-train"
    base_tree = scratch / "base"
    subprocess.run(["git", "worktree", "remove", "--force", str(base_tree)], cwd=ROOT, capture_output=True)
    subprocess.run(
        ["git", "worktree", "add", "--detach", str(base_tree), args.base], cwd=ROOT, check=True, capture_output=True
    )
    head = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    versions = {f"base {args.base}": base_tree, f"head {head}": ROOT}
    runs: dict[str, list[dict]] = {}
    for round_ in range(args.rounds):
        order = list(versions) if round_ % 2 == 0 else list(reversed(versions))
        for name in order:
            for evaluation in args.eval.split(",") if args.eval else [None]:
                key = f"{name} {evaluation}" if evaluation else name
                if evaluation:
                    adapter = ROOT / args.adapter  # evaluations stay inside the run they evaluate
                    result = eval_once(versions[name], adapter, evaluation, adapter / "ab-eval", overrides)
                else:
                    result = train_once(versions[name], scratch / "run", overrides)
                runs.setdefault(key, []).append(result)
                print(key, result, flush=True)
    subprocess.run(["git", "worktree", "remove", "--force", str(base_tree)], cwd=ROOT, capture_output=True)
    timed = "inference_seconds" if args.eval else "train_seconds"
    summary = {key: round(statistics.mean(r[timed] for r in rs), 1) for key, rs in runs.items()}
    command = ["python", "bench/ab_train.py", "--base", args.base, "--rounds", str(args.rounds)]
    command += ["--eval", args.eval, "--adapter", args.adapter] if args.eval else []
    record = {
        "benchmark": f"instructemo {'generate-eval' if args.eval else 'sft'} with two versions of the code, "
        "alternating order",
        "command": " ".join([*command, *args.overrides]),
        "run": f"instructemo generate-eval {CONFIG} output_dir={args.adapter} max_eval_samples={EVAL_ROWS} "
        + " ".join(overrides)
        if args.eval
        else f"instructemo sft {CONFIG} " + " ".join(overrides),
        "machine": machine(),
        "runs": runs,
        f"mean_{timed}": summary,
    }
    write_result(RESULTS / ("ab_infer.json" if args.eval else "ab_train.json"), record)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
