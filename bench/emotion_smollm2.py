"""Foundation benchmark: SmolLM2-135M-Instruct + LoRA on dair-ai emotion, on this machine.

Runs the two user-facing commands exactly as a user would, times them, and
writes bench/results/emotion_smollm2.json with the commands and the figures.

    python bench/emotion_smollm2.py [--output-dir saves/bench-emotion]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from result_file import machine, write_result

ROOT = Path(__file__).resolve().parents[1]
CONFIG = "examples/smollm2_emotion.yaml"
RESULTS = ROOT / "bench" / "results" / "emotion_smollm2.json"


def timed(command: list[str]) -> float:
    print("$", " ".join(command), flush=True)
    started = time.perf_counter()
    subprocess.run(command, cwd=ROOT, check=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", default="saves/bench-emotion")
    args = parser.parse_args()
    out = ROOT / args.output_dir
    shutil.rmtree(out, ignore_errors=True)
    exe = str(Path(sys.executable).with_name("instructemo"))
    sft = [exe, "sft", CONFIG, f"output_dir={args.output_dir}"]
    evaluate = [exe, "generate-eval", CONFIG, f"output_dir={args.output_dir}"]
    train_seconds = timed(sft)
    eval_seconds = timed(evaluate)
    metrics = json.loads((out / "eval" / "metrics.json").read_text())
    m = metrics["metrics"]
    train = json.loads((out / "train_results.json").read_text())
    result = {
        "benchmark": "SmolLM2-135M-Instruct LoRA r16/a32 all-linear, dair-ai emotion, first 4000 train rows, 1 epoch; 2000-row test split",
        "commands": [" ".join(["instructemo", *sft[1:]]), " ".join(["instructemo", *evaluate[1:]])],
        "machine": machine(),
        "wall_seconds": {
            "sft": round(train_seconds, 1),
            "generate_eval": round(eval_seconds, 1),
            "total": round(train_seconds + eval_seconds, 1),
        },
        "train": train,
        "eval": {k: m[k] for k in ("n", "accuracy", "macro_f1", "micro_f1", "weighted_f1", "invalid", "invalid_rate")},
        "eval_examples_per_second": metrics["examples_per_second"],
        "per_class_f1": {label: round(v["f1"], 4) for label, v in m["per_class"].items()},
        "targets": {"accuracy_at_least": 0.87, "invalid_rate_at_most": 0.01, "total_minutes_under": 45},
    }
    result["targets_met"] = (
        m["accuracy"] >= 0.87 and m["invalid_rate"] <= 0.01 and train_seconds + eval_seconds < 45 * 60
    )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    write_result(RESULTS, result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
