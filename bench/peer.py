"""Peer benchmark: instructemo against LLaMA-Factory, same model, rows and settings, in one run.

LLaMA-Factory (PyPI `llamafactory`) is installed in its own virtual environment
under a scratch folder, never as a project dependency. Both frameworks train
SmolLM2-135M-Instruct (the dense directory instructemo materialises) with LoRA
rank 16 / alpha 32 on all linear layers, cutoff 256, batch 16, lr 5e-4 with
cosine decay and 10 warm-up steps, 1 epoch on the first 4000 emotion train
rows, bf16, no gradient checkpointing, on the same prompts: the
alpaca rows LLaMA-Factory reads are rendered by instructemo's own template, and
LLaMA-Factory's `smollm2` chat template is the model's ChatML with the same
default system prompt.

Then each framework's own predict path labels the 2000-row test split greedily
(LLaMA-Factory's generated_predictions.jsonl is scored by instructemo's parser
and metrics). Each command runs alone, under a wrapper that records its wall
time and peak memory (the largest resident set of its processes).

    python bench/peer.py [--seeds 42,1,2] [--reuse-peer-runs] [--scratch .scratch/peer] [--skip-install] [--smoke]
                         [--variant NAME --ours-overrides key=value,... --evaluations hf:score] [--results FILE]

Accuracy after one epoch on 4000 rows moves by about a point from seed to
seed (the seed sets the LoRA initialisation and the batch order), so both
frameworks train once per seed and the accuracy claim is the mean over seeds.
Speed is the mean over the seeds too. Each seed's runs live in
SCRATCH/seed-N. LLaMA-Factory's side does not depend on instructemo's code,
so --reuse-peer-runs takes a seed's finished LLaMA-Factory record
(seed-N/llamafactory.json) instead of training it again; the JSON says which
were reused. instructemo always trains again. hf:generate and hf:score run
for every seed, vllm:generate for the first (--evaluations picks others).

--variant NAME trains instructemo with --ours-overrides on top of the example
config, into SCRATCH/seed-N/instructemo-NAME, and writes
peer_llamafactory_NAME.json: the same comparison for a training option.

--smoke runs the whole harness on 64 train and 64 test rows (a check that
both frameworks run, not a measurement) and writes peer_llamafactory.smoke.json.

Writes bench/results/peer_llamafactory.json (or --results FILE) and prints the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import yaml
from result_file import machine, write_result

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from instructemo.data.datasets import load_split  # noqa: E402
from instructemo.data.readers import shared_data_dir  # noqa: E402
from instructemo.evaluate.metrics import score  # noqa: E402
from instructemo.models.load import load_tokenizer, resolve_model_path  # noqa: E402
from instructemo.prompts.builder import PromptBuilder, load_template  # noqa: E402
from instructemo.prompts.parse import parse_labels  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "peer_llamafactory.json"
CONFIG = "examples/smollm2_emotion.yaml"
PEER_VERSION = "llamafactory==0.9.5"
TRAIN_ROWS, CUTOFF = 4000, 256
SETTINGS = {
    "lora_rank": 16,
    "lora_alpha": 32,
    "lora_dropout": 0.0,
    "per_device_train_batch_size": 16,
    "gradient_accumulation_steps": 1,
    "learning_rate": 5.0e-4,
    "num_train_epochs": 1,
    "lr_scheduler_type": "cosine",
    "warmup_steps": 10,
    "cutoff_len": CUTOFF,
}
EVAL_BATCH, MAX_NEW_TOKENS = 32, 8

# Runs a command and reports its wall time and the peak resident memory of its process tree.
MEASURE = """
import json, resource, subprocess, sys, time
started = time.perf_counter()
code = subprocess.run(sys.argv[2:]).returncode
peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
open(sys.argv[1], "w").write(json.dumps({"rc": code, "wall_seconds": time.perf_counter() - started, "peak_rss_gib": peak_kib / 2**20}))
sys.exit(code)
"""


def measured(command: list[str], scratch: Path, name: str, env: dict | None = None) -> dict:
    print("$", " ".join(command), flush=True)
    record = scratch / f"{name}.measure.json"
    subprocess.run([sys.executable, "-c", MEASURE, str(record), *command], cwd=ROOT, env=env, check=True)
    result = json.loads(record.read_text())
    return {
        "command": " ".join(command),
        "wall_seconds": round(result["wall_seconds"], 1),
        "peak_rss_gib": round(result["peak_rss_gib"], 2),
    }


def install_peer(venv: Path) -> None:
    """LLaMA-Factory with the CPU torch wheel, in one pip call (else pip pulls a CUDA torch)."""
    if not (venv / "bin" / "llamafactory-cli").is_file():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        pip = [str(venv / "bin" / "pip"), "install", "-q"]
        # jieba, nltk and rouge-chinese: its predict path imports them without declaring them.
        subprocess.run([*pip, PEER_VERSION, "torch==2.13.0", "jieba", "nltk", "rouge-chinese"], check=True)
    # The index's torchvision and torchaudio are CUDA builds that break imports beside a CPU torch.
    subprocess.run([str(venv / "bin" / "pip"), "uninstall", "-y", "-q", "torchvision", "torchaudio"], check=False)


def peer_env(scratch: Path) -> dict:
    """LLaMA-Factory imports torchaudio at module level (audio only): a stub stands in for text runs."""
    stubs = scratch / "stubs" / "torchaudio"
    stubs.mkdir(parents=True, exist_ok=True)
    (stubs / "__init__.py").write_text("# text-only runs: LLaMA-Factory imports torchaudio but never calls it here\n")
    caches = scratch / "cache"
    return {
        **os.environ,
        "PYTHONPATH": str(scratch / "stubs"),
        "HF_HOME": str(caches / "hf"),
        "HF_HUB_OFFLINE": "1",
        "MPLCONFIGDIR": str(caches / "mpl"),
        "DISABLE_VERSION_CHECK": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "WANDB_DISABLED": "true",
    }


def write_alpaca(model_path: str, data_dir: Path, train_rows: int, test_rows: int | None) -> tuple[list, object, float]:
    """The same rows and prompts as instructemo trains on, as alpaca JSON; returns (test gold, label space, tokens/row)."""
    tokenizer = load_tokenizer(model_path)
    dataset_dir = shared_data_dir()
    train = load_split("emotion", dataset_dir, max_samples=train_rows)
    test = load_split("emotion:test", dataset_dir, label_space=train.label_space, max_samples=test_rows)
    builder = PromptBuilder(tokenizer, load_template("auto", train.template), train.label_space, CUTOFF)

    def rows(split):
        return [
            {
                "instruction": builder.prompt(r.text)[0]["content"],
                "input": "",
                "output": train.label_space.answer(r.labels),
            }
            for r in split.records
        ]

    data_dir.mkdir(parents=True, exist_ok=True)
    train_rows = rows(train)
    for name, items in (("emotion_train", train_rows), ("emotion_test", rows(test))):
        (data_dir / f"{name}.json").write_text(json.dumps(items))
    info = {
        name: {
            "file_name": f"{name}.json",
            "columns": {"prompt": "instruction", "query": "input", "response": "output"},
        }
        for name in ("emotion_train", "emotion_test")
    }
    (data_dir / "dataset_info.json").write_text(json.dumps(info, indent=2))
    tokens = [
        len(
            tokenizer.apply_chat_template(
                [{"role": "user", "content": r["instruction"]}, {"role": "assistant", "content": r["output"]}],
                tokenize=True,
                return_dict=False,
            )
        )
        for r in train_rows
    ]
    return [r.labels for r in test.records], train.label_space, sum(tokens) / len(tokens)


def bf16_view(model_path: str, scratch: Path) -> str:
    """The same model directory with bfloat16 as its config dtype, for LLaMA-Factory.

    LLaMA-Factory loads weights in the dtype the config names (torch_dtype
    "auto"). instructemo's dense directory is dequantized to float32, so as it
    is LLaMA-Factory would train float32 weights under bf16 autocast, slower
    than instructemo's bf16 weights and slower than it runs on a hub model
    (whose config says bfloat16). With this view both load the same float32
    file into the same bf16 weights. The weight files are linked, not copied.
    """
    source = Path(model_path)
    view = scratch / "model-bf16"
    view.mkdir(parents=True, exist_ok=True)
    for item in source.iterdir():
        target = view / item.name
        if item.name == "config.json":
            config = json.loads(item.read_text())
            config["dtype"] = "bfloat16"
            target.write_text(json.dumps(config, indent=2))
        elif not target.exists():
            target.symlink_to(item.resolve())
    return str(view)


def peer_configs(model_path: str, data_dir: Path, folder: Path, seed: int) -> tuple[Path, Path]:
    common = {
        "model_name_or_path": model_path,
        "template": "smollm2",
        "dataset_dir": str(data_dir),
        "cutoff_len": CUTOFF,
        "bf16": True,
        "use_cpu": True,
        "report_to": "none",
        "overwrite_output_dir": True,
        "preprocessing_num_workers": 1,
        "dataloader_num_workers": 0,
        "seed": seed,
    }
    adapter = folder / "llamafactory-adapter"
    train = {
        **common,
        "stage": "sft",
        "do_train": True,
        "finetuning_type": "lora",
        "lora_target": "all",
        "lora_rank": SETTINGS["lora_rank"],
        "lora_alpha": SETTINGS["lora_alpha"],
        "lora_dropout": SETTINGS["lora_dropout"],
        "dataset": "emotion_train",
        "per_device_train_batch_size": SETTINGS["per_device_train_batch_size"],
        "gradient_accumulation_steps": SETTINGS["gradient_accumulation_steps"],
        "learning_rate": SETTINGS["learning_rate"],
        "num_train_epochs": SETTINGS["num_train_epochs"],
        "lr_scheduler_type": SETTINGS["lr_scheduler_type"],
        "warmup_steps": SETTINGS["warmup_steps"],
        "disable_gradient_checkpointing": True,
        "logging_steps": 10,
        "save_strategy": "no",
        "output_dir": str(adapter),
        "plot_loss": False,
    }
    predict = {
        **common,
        "stage": "sft",
        "do_predict": True,
        "predict_with_generate": True,
        "finetuning_type": "lora",
        "adapter_name_or_path": str(adapter),
        "eval_dataset": "emotion_test",
        "per_device_eval_batch_size": EVAL_BATCH,
        "do_sample": False,
        "max_new_tokens": MAX_NEW_TOKENS,
        "output_dir": str(folder / "llamafactory-predict"),
    }
    # YAML: its JSON config reader is broken in 0.9.5 (json.load on a Path).
    paths = folder / "llamafactory-train.yaml", folder / "llamafactory-predict.yaml"
    for path, values in zip(paths, (train, predict)):
        path.write_text(yaml.safe_dump(values, sort_keys=False))
    return paths


def run_peer(
    venv: Path, scratch: Path, folder: Path, seed: int, model_path: str, gold, space, tokens_per_row: float
) -> dict:
    env = peer_env(scratch)
    train_config, predict_config = peer_configs(bf16_view(model_path, scratch), scratch / "data", folder, seed)
    cli = str(venv / "bin" / "llamafactory-cli")
    train = measured([cli, "train", str(train_config)], folder, "peer-train", env)
    train_metrics = json.loads((folder / "llamafactory-adapter" / "train_results.json").read_text())
    predict = measured([cli, "train", str(predict_config)], folder, "peer-predict", env)
    predict_metrics = json.loads((folder / "llamafactory-predict" / "predict_results.json").read_text())
    lines = (folder / "llamafactory-predict" / "generated_predictions.jsonl").read_text().splitlines()
    predicted = [parse_labels(json.loads(line)["predict"], space) for line in lines]
    m = score(gold, predicted, space)
    examples_per_second = train_metrics["train_samples_per_second"]
    return {
        "version": PEER_VERSION,
        "train": {
            **train,
            "train_seconds": round(train_metrics["train_runtime"], 1),
            "examples_per_second": examples_per_second,
            "tokens_per_second": round(examples_per_second * tokens_per_row, 1),
            "final_loss": train_metrics.get("train_loss"),
        },
        "predict": {
            **predict,
            "mode": "generate (greedy)",
            "examples_per_second": predict_metrics["predict_samples_per_second"],
            "accuracy": m["accuracy"],
            "macro_f1": m["macro_f1"],
            "invalid_rate": m["invalid_rate"],
            "n": m["n"],
        },
    }


def run_ours(
    folder: Path,
    seed: int,
    tokens_per_row: float,
    sample_overrides: list[str],
    evaluations: list[str],
    variant: str | None = None,
    options: list[str] = (),
) -> dict:
    exe = str(Path(sys.executable).with_name("instructemo"))
    name = f"instructemo-{variant}" if variant else "instructemo-run"
    out = folder / name
    overrides = [f"output_dir={out}", "overwrite_output_dir=true", f"seed={seed}", *options, *sample_overrides]
    train = measured([exe, "sft", CONFIG, *overrides], folder, f"{name}-train")
    summary = json.loads((out / "train_results.json").read_text())
    ours = {
        "train": {
            **train,
            "train_seconds": summary["train_seconds"],
            "examples_per_second": summary["train_examples_per_second"],
            "tokens_per_second": round(summary["train_examples_per_second"] * tokens_per_row, 1),
            "final_loss": summary["mean_loss"],
        },
        "predict": {},
    }
    for evaluation in evaluations:
        backend, mode = evaluation.split(":")
        eval_dir = out / f"eval-{backend}-{mode}"
        run = measured(
            [
                exe,
                "generate-eval",
                CONFIG,
                f"output_dir={out}",
                f"eval_output_dir={eval_dir}",
                f"backend={backend}",
                f"mode={mode}",
                f"per_device_eval_batch_size={EVAL_BATCH}",
                f"max_new_tokens={MAX_NEW_TOKENS}",
                *sample_overrides,
            ],
            folder,
            f"{name}-{backend}-{mode}",
        )
        metrics = json.loads((eval_dir / "metrics.json").read_text())
        m = metrics["metrics"]
        ours["predict"][f"{backend}:{mode}"] = {
            **run,
            "examples_per_second": metrics["examples_per_second"],
            "accuracy": m["accuracy"],
            "macro_f1": m["macro_f1"],
            "invalid_rate": m["invalid_rate"],
            "n": m["n"],
        }
    return ours


def peer_seed(
    args, venv: Path, scratch: Path, folder: Path, seed: int, model_path: str, gold, space, tokens_per_row: float
) -> dict:
    """LLaMA-Factory's record for one seed: trained now, or with --reuse-peer-runs the one a finished run left."""
    record = folder / "llamafactory.json"
    if args.reuse_peer_runs and record.is_file():
        print(f"seed {seed}: reusing LLaMA-Factory's finished run in {record}", flush=True)
        return {**json.loads(record.read_text()), "reused": str(Path(args.scratch) / folder.name / record.name)}
    peer = run_peer(venv, scratch, folder, seed, model_path, gold, space, tokens_per_row)
    write_result(record, peer)
    return peer


def spread(values: list[float]) -> dict:
    return {
        "mean": round(statistics.mean(values), 4),
        "stdev": round(statistics.stdev(values), 4) if len(values) > 1 else None,
        "values": values,
    }


def summarise(runs: dict[int, dict]) -> dict:
    """Per-framework means over seeds, and the ratios the targets are about."""
    peer = [r["llamafactory"] for r in runs.values()]
    ours = [r["instructemo"] for r in runs.values()]
    modes = [m for m in ours[0]["predict"] if all(m in o["predict"] for o in ours)]
    first = ours[0]["predict"]
    best = max(first, key=lambda k: first[k]["examples_per_second"])
    accuracy = {
        "llamafactory": spread([p["predict"]["accuracy"] for p in peer]),
        **{f"instructemo {m}": spread([o["predict"][m]["accuracy"] for o in ours]) for m in modes},
    }
    macro_f1 = {
        "llamafactory": spread([p["predict"]["macro_f1"] for p in peer]),
        **{f"instructemo {m}": spread([o["predict"][m]["macro_f1"] for o in ours]) for m in modes},
    }
    train_speed = {
        "llamafactory": spread([p["train"]["examples_per_second"] for p in peer]),
        "instructemo": spread([o["train"]["examples_per_second"] for o in ours]),
    }
    ratios = {
        "train_examples_per_second": round(train_speed["instructemo"]["mean"] / train_speed["llamafactory"]["mean"], 2),
        "predict_examples_per_second_best_mode": round(
            first[best]["examples_per_second"] / peer[0]["predict"]["examples_per_second"], 2
        ),
        "predict_best_mode": best,
        "peak_rss_train": round(ours[0]["train"]["peak_rss_gib"] / peer[0]["train"]["peak_rss_gib"], 2),
        "mean_accuracy_difference_best_mode": round(
            accuracy[f"instructemo {best}"]["mean"] - accuracy["llamafactory"]["mean"], 4
        )
        if best in modes
        else None,
    }
    if "hf:generate" in modes:
        ratios["mean_accuracy_difference_hf_generate"] = round(
            accuracy["instructemo hf:generate"]["mean"] - accuracy["llamafactory"]["mean"], 4
        )
    return {
        "accuracy_over_seeds": accuracy,
        "macro_f1_over_seeds": macro_f1,
        "train_examples_per_second_over_seeds": train_speed,
        "ratios": ratios,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--seeds", default="42", help="comma-separated training seeds, both frameworks train once per seed"
    )
    parser.add_argument(
        "--reuse-peer-runs",
        action="store_true",
        help="take a seed's finished LLaMA-Factory run instead of training it again",
    )
    parser.add_argument("--scratch", default=".scratch/peer", help="scratch folder for the peer's venv, data and runs")
    parser.add_argument("--skip-install", action="store_true", help="use the peer venv as it is")
    parser.add_argument("--smoke", action="store_true", help="64 train and 64 test rows: check the harness runs")
    parser.add_argument(
        "--results",
        help="result file name in bench/results (default peer_llamafactory[_VARIANT].json): "
        "keeps an earlier run's file when a rerun covers fewer seeds",
    )
    parser.add_argument("--variant", help="name of an instructemo training option to compare (needs --ours-overrides)")
    parser.add_argument("--ours-overrides", default="", help="comma-separated key=value for instructemo's training")
    parser.add_argument(
        "--evaluations",
        help="comma-separated backend:mode runs per seed (default hf:generate,hf:score; "
        "vllm:generate too for the first seed)",
    )
    args = parser.parse_args()
    options = [o for o in args.ours_overrides.split(",") if o.strip()]
    if bool(args.variant) != bool(options):
        parser.error("--variant and --ours-overrides go together")
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    train_rows, test_rows = (64, 64) if args.smoke else (TRAIN_ROWS, None)
    sample_overrides = [f"max_samples={train_rows}"] + ([f"max_eval_samples={test_rows}"] if test_rows else [])
    scratch = (ROOT / args.scratch).resolve()
    venv = scratch / "venv"
    scratch.mkdir(parents=True, exist_ok=True)
    if not args.skip_install:
        install_peer(venv)
    model_path = resolve_model_path("smollm2-135m-instruct")
    gold, space, tokens_per_row = write_alpaca(model_path, scratch / "data", train_rows, test_rows)

    runs = {}
    for n, seed in enumerate(seeds):
        folder = scratch / (f"smoke-seed-{seed}" if args.smoke else f"seed-{seed}")
        folder.mkdir(parents=True, exist_ok=True)
        peer = peer_seed(args, venv, scratch, folder, seed, model_path, gold, space, tokens_per_row)
        evaluations = (
            args.evaluations.split(",")
            if args.evaluations
            else ["hf:generate", "hf:score"] + (["vllm:generate"] if n == 0 else [])
        )
        ours = run_ours(folder, seed, tokens_per_row, sample_overrides, evaluations, args.variant, options)
        runs[seed] = {"llamafactory": peer, "instructemo": ours}
    summary = summarise(runs)
    ratios = summary["ratios"]
    command = f"python bench/peer.py --seeds {','.join(map(str, seeds))}" + (
        " --reuse-peer-runs" if args.reuse_peer_runs else ""
    )
    if args.variant:
        command += f" --variant {args.variant} --ours-overrides {','.join(options)}"
    if args.evaluations:
        command += f" --evaluations {args.evaluations}"
    result = {
        "benchmark": "instructemo vs LLaMA-Factory: SmolLM2-135M-Instruct LoRA r16/a32 all-linear, first 4000 dair-ai emotion "
        "train rows, 1 epoch, batch 16, lr 5e-4 cosine, cutoff 256, bf16; 2000-row test split, greedy",
        "command": command + (" --smoke" if args.smoke else ""),
        "machine": machine(),
        "settings": SETTINGS,
        "instructemo_overrides": options,
        "seeds": seeds,
        "tokens_per_training_row": round(tokens_per_row, 1),
        **summary,
        "targets": {"train_ratio_at_least": 1.5, "predict_ratio_at_least": 3.0, "mean_accuracy_at_least_peer": True},
        "targets_met": {
            "train": ratios["train_examples_per_second"] >= 1.5,
            "predict": ratios["predict_examples_per_second_best_mode"] >= 3.0,
            "accuracy": ratios["mean_accuracy_difference_best_mode"] is not None
            and ratios["mean_accuracy_difference_best_mode"] >= 0,
        },
        "runs": {str(seed): run for seed, run in runs.items()},
    }
    if args.smoke:
        result["smoke"] = "64 train and 64 test rows: a check that the harness runs, not a measurement"
    results = RESULTS.with_name(f"peer_llamafactory_{args.variant}.json") if args.variant else RESULTS
    if args.results:
        results = RESULTS.with_name(Path(args.results).name)
        result["command"] += f" --results {results.name}"
    write_result(results.with_suffix(".smoke.json") if args.smoke else results, result)
    print(json.dumps({k: summary[k] for k in ("accuracy_over_seeds", "ratios")}, indent=2))


if __name__ == "__main__":
    main()
