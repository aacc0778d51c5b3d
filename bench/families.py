"""Two real embedded model families side by side: SmolLM2-135M-Instruct (ChatML) and Gemma 3 270M (base, Gemma's turns).

Same settings for both (LoRA r16/a32 all-linear, lr 5e-4, batch 16, one epoch on
the first --train-rows emotion rows; generate and score mode on the first
--eval-rows test rows). Each command runs as a user would run it, in its own
process, timed, with its peak resident memory. Writes bench/results/families_emotion.json.

    python bench/families.py [--train-rows 1000] [--eval-rows 500]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

from result_file import write_result

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "families_emotion.json"
MODELS = {
    "SmolLM2-135M-Instruct": "examples/smollm2_emotion.yaml",
    "Gemma 3 270M (base)": "examples/gemma3_emotion.yaml",
}

# Runs one command and prints its wall time and the peak resident memory of its process tree.
MEASURE = """
import json, resource, subprocess, sys, time
started = time.perf_counter()
code = subprocess.call(sys.argv[2:])
peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
open(sys.argv[1], "w").write(json.dumps({"rc": code, "seconds": time.perf_counter() - started, "peak_rss_gib": peak_kib / 2**20}))
"""


def measured(command: list[str], scratch: Path) -> dict:
    print("$", " ".join(command), flush=True)
    out = scratch / "measure.json"
    subprocess.run([sys.executable, "-c", MEASURE, str(out), *command], cwd=ROOT, check=True)
    result = json.loads(out.read_text())
    if result["rc"] != 0:
        raise SystemExit(f"failed ({result['rc']}): {' '.join(command)}")
    return {"seconds": round(result["seconds"], 1), "peak_rss_gib": round(result["peak_rss_gib"], 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-rows", type=int, default=1000)
    parser.add_argument("--eval-rows", type=int, default=500)
    args = parser.parse_args()
    exe = str(Path(sys.executable).with_name("instructemo"))
    rows = []
    commands = []
    for name, config in MODELS.items():
        out_dir = f"saves/bench-families/{Path(config).stem}"
        shutil.rmtree(ROOT / out_dir, ignore_errors=True)
        common = [f"output_dir={out_dir}", f"max_samples={args.train_rows}", f"max_eval_samples={args.eval_rows}"]
        sft = [exe, "sft", config, *common]
        generate = [exe, "generate-eval", config, *common, f"eval_output_dir={out_dir}/eval-generate"]
        score = [exe, "generate-eval", config, *common, "mode=score", f"eval_output_dir={out_dir}/eval-score"]
        scratch = ROOT / out_dir
        scratch.parent.mkdir(parents=True, exist_ok=True)
        train, gen, sco = (measured(c, scratch.parent) for c in (sft, generate, score))
        results = json.loads((scratch / "train_results.json").read_text())
        by_mode = {}
        for mode, folder in (("generate", "eval-generate"), ("score", "eval-score")):
            m = json.loads((scratch / folder / "metrics.json").read_text())
            by_mode[mode] = {
                "accuracy": round(m["metrics"]["accuracy"], 4),
                "macro_f1": round(m["metrics"]["macro_f1"], 4),
                "invalid_rate": m["metrics"]["invalid_rate"],
                "predict_examples_per_second": m["examples_per_second"],
            }
        rows.append(
            {
                "model": name,
                "config": config,
                "train_examples_per_second": results["train_examples_per_second"],
                "train_seconds": results["train_seconds"],
                "final_loss": results["final_loss"],
                "mean_loss": results["mean_loss"],
                "peak_rss_gib": {
                    "sft": train["peak_rss_gib"],
                    "generate": gen["peak_rss_gib"],
                    "score": sco["peak_rss_gib"],
                },
                "wall_seconds": {"sft": train["seconds"], "generate": gen["seconds"], "score": sco["seconds"]},
                **by_mode,
            }
        )
        commands += [" ".join(["instructemo", *c[1:]]) for c in (sft, generate, score)]
    result = {
        "benchmark": (
            f"LoRA r16/a32 all-linear, lr 5e-4, batch 16, 1 epoch on the first {args.train_rows} dair-ai emotion "
            f"train rows; greedy generate and score mode on the first {args.eval_rows} test rows; this CPU (2 cores)"
        ),
        "command": f"python bench/families.py --train-rows {args.train_rows} --eval-rows {args.eval_rows}",
        "commands": commands,
        "rows": rows,
    }
    write_result(RESULTS, result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
