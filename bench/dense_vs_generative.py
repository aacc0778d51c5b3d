"""Dense versus generative on dair-ai emotion, on this machine: the same rows, epochs and scorer.

Runs, each the user-facing commands (sft, then generate-eval on the 2000-row test split):
  - MiniLM-L6 with a classification head, fully fine-tuned (examples/minilm_head_emotion.yaml),
    once without and once with balanced class weights;
  - SmolLM2-135M-Instruct with a score head, LoRA r16 (examples/smollm2_head_emotion.yaml);
  - SmolLM2-135M-Instruct generative, LoRA r16 (examples/smollm2_emotion.yaml), evaluated in
    generate mode (greedy + parser) and score mode (label likelihoods).
All train on the first 4000 train rows for 1 epoch. Then `instructemo compare` puts them side
by side; bench/results/dense_vs_generative.json holds the commands, the table and the figures,
and dense_vs_generative_per_class_f1.png the chart.

    python bench/dense_vs_generative.py [--out saves/dense-vs-generative] [--generative-run DIR]

--generative-run reuses a finished run of examples/smollm2_emotion.yaml (its train_results.json
and eval directories) instead of training it again: bench/peer.py leaves one per seed in
.scratch/peer/seed-N/instructemo-run, trained by the same code on the same settings.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

from result_file import machine, write_result

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "dense_vs_generative.json"
CHART = RESULTS.with_name("dense_vs_generative_per_class_f1.png")


def run(command: list[str], commands: list[str]) -> None:
    print("$", " ".join(command), flush=True)
    commands.append(" ".join(["instructemo", *command[1:]]))
    subprocess.run(command, cwd=ROOT, check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="saves/dense-vs-generative")
    parser.add_argument("--generative-run", help="a finished run of examples/smollm2_emotion.yaml to reuse")
    args = parser.parse_args()
    exe = str(Path(sys.executable).with_name("instructemo"))
    out = ROOT / args.out
    commands: list[str] = []
    compared: list[Path] = []

    dense = [
        ("minilm-cls", "examples/minilm_head_emotion.yaml", []),
        ("minilm-head-balanced", "examples/minilm_head_emotion.yaml", ["class_weights=balanced"]),
        ("smollm2-cls", "examples/smollm2_head_emotion.yaml", []),
    ]
    for name, config, extra in dense:
        overrides = [f"output_dir={out / name}", "overwrite_output_dir=true", *extra]
        run([exe, "sft", config, *overrides], commands)
        run([exe, "generate-eval", config, *overrides], commands)
        compared.append(out / name)

    generative = Path(args.generative_run) if args.generative_run else out / "smollm2-generative"
    config = "examples/smollm2_emotion.yaml"
    if not args.generative_run:
        run([exe, "sft", config, f"output_dir={generative}", "overwrite_output_dir=true"], commands)
    for mode in ("generate", "score"):
        eval_dir = generative / f"eval-hf-{mode}"
        if not (eval_dir / "metrics.json").is_file():
            run(
                [
                    exe,
                    "generate-eval",
                    config,
                    f"output_dir={generative}",
                    f"eval_output_dir={eval_dir}",
                    f"mode={mode}",
                ],
                commands,
            )
        compared.append(eval_dir)

    table_dir = out / "compare"
    run([exe, "compare", *map(str, compared), "--output", str(table_dir)], commands)
    rows = json.loads((table_dir / "compare.json").read_text())
    result = {
        "benchmark": "dair-ai emotion, first 4000 train rows, 1 epoch; 2000-row test split; one scorer for all runs",
        "command": "python bench/dense_vs_generative.py"
        + (f" --generative-run {args.generative_run}" if args.generative_run else ""),
        "commands": commands,
        "machine": machine(),
        "runs": rows,
        "table": (table_dir / "compare.md").read_text(),
    }
    write_result(RESULTS, result)
    shutil.copyfile(table_dir / "per_class_f1.png", CHART)
    print(result["table"])


if __name__ == "__main__":
    main()
