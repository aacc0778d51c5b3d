"""Training speed of this checkout against an earlier commit, on this machine, in alternating order.

A change to the training path must not slow it down. Absolute figures move
with the machine (a shared 2-core host can run at half speed for hours), so
this runs the same short `instructemo sft` with both versions, one after the
other, in alternating order, and records each run's train_results.json.

    python bench/ab_train.py --base e1273a7 [--rounds 2] [key=value ...]

The base commit is checked out as a git worktree under .scratch/ and run with
this checkout's environment. Writes bench/results/ab_train.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

from result_file import write_result

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "ab_train.json"
CONFIG = "examples/smollm2_emotion.yaml"
DEFAULT_OVERRIDES = ["max_samples=320", "logging_steps=5"]


def train_once(source: Path, output_dir: Path, overrides: list[str]) -> dict:
    shutil.rmtree(output_dir, ignore_errors=True)
    env = {
        **os.environ,
        "PYTHONPATH": str(source / "src"),
        "INSTRUCTEMO_SHARED_DATA": os.environ.get("INSTRUCTEMO_SHARED_DATA", str(ROOT.parent / "shared" / "data")),
    }
    command = [sys.executable, "-m", "instructemo.cli", "sft", CONFIG, f"output_dir={output_dir}", *overrides]
    subprocess.run(command, cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return json.loads((output_dir / "train_results.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="Commit to compare against.")
    parser.add_argument("--rounds", type=int, default=2, help="Runs of each version (alternating order).")
    parser.add_argument("overrides", nargs="*", help=f"Config overrides (default: {' '.join(DEFAULT_OVERRIDES)}).")
    args = parser.parse_args()
    overrides = args.overrides or DEFAULT_OVERRIDES
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
    runs: dict[str, list[dict]] = {name: [] for name in versions}
    for round_ in range(args.rounds):
        order = list(versions) if round_ % 2 == 0 else list(reversed(versions))
        for name in order:
            result = train_once(versions[name], scratch / "run", overrides)
            runs[name].append(
                {
                    "train_seconds": result["train_seconds"],
                    "global_steps": result["global_steps"],
                    "train_examples_per_second": result["train_examples_per_second"],
                    # before mean_loss existed, final_loss held the run's mean loss
                    "mean_loss": result.get("mean_loss", result.get("final_loss")),
                }
            )
            print(name, runs[name][-1], flush=True)
    subprocess.run(["git", "worktree", "remove", "--force", str(base_tree)], cwd=ROOT, capture_output=True)
    summary = {name: round(statistics.mean(r["train_seconds"] for r in rs), 1) for name, rs in runs.items()}
    record = {
        "benchmark": "instructemo sft on the same rows with two versions of the code, alternating order",
        "command": " ".join(
            ["python", "bench/ab_train.py", "--base", args.base, "--rounds", str(args.rounds), *args.overrides]
        ),
        "sft": f"instructemo sft {CONFIG} " + " ".join(overrides),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "runs": runs,
        "mean_train_seconds": summary,
    }
    write_result(RESULTS, record)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
