"""The GPU paths, checked for real on one NVIDIA GPU in a few minutes: `bash bench/gpu_check.sh`.

Each check runs the `instructemo` command a user would run, on a tiny Llama
built here (head_dim 64, which FlashAttention-2 and vLLM take), and records
its exit status, seconds and figures. A check whose package is missing on the
machine is recorded as skipped with the reason, never as passed:

- fa2_bf16_lora_sft     flash_attn: fa2, bf16, LoRA; then generate-eval on the adapter
- qlora_4bit_sft        finetuning_type: qlora (bitsandbytes NF4), then generate-eval
- score_mode            generate-eval mode=score (hf): a probability for every label
- vllm_cuda_lora        generate-eval backend=vllm with the LoRA served by vLLM (vllm_merge_lora=false)
- deepspeed_zero3       ZeRO-3 sft with 2 processes when 2 GPUs exist, else 1
- placement             where each inference path put its model (device: auto), and rows/s against device=cpu
                        for the same run: generate-eval (metrics.json's device), predict, serve (/health's
                        device) and a classification head (stage: head)

    python bench/gpu_check.py --out DIR     (writes DIR/gpu_check.json and bench/results/gpu_check.json)
    python bench/gpu_check.py --out DIR --rehearse-on-cpu
        runs what a CPU can (LoRA sft, score mode, vLLM-CPU LoRA, DeepSpeed) to check this script itself
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))


def run(name: str, args: list[str], work: Path, log: list[str]) -> dict:
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "instructemo.cli", *args], cwd=ROOT, capture_output=True, text=True, timeout=420
    )
    seconds = round(time.perf_counter() - started, 1)
    log.append(f"$ instructemo {' '.join(args)}\n{done.stdout[-2000:]}{done.stderr[-4000:]}")
    last = (done.stderr.strip().splitlines() or [""])[-1]
    return {"rc": done.returncode, "seconds": seconds, **({} if done.returncode == 0 else {"error": last[:400]})}


def metrics(path: Path) -> dict:
    m = json.loads(path.read_text())
    return {
        "accuracy": m["metrics"]["accuracy"],
        "invalid_rate": m["metrics"]["invalid_rate"],
        "backend": m["backend"],
        "mode": m["mode"],
        "examples_per_second": m["examples_per_second"],
    }


def placement(lora: str, model: Path, work: Path, log: list[str], gpus: int, rehearse: bool) -> dict:
    """Each inference path with device: auto, then device=cpu: the device it reports, and its rows per second."""
    from conftest import EMOTION_ROWS, free_port
    from test_end_to_end import tiny_config

    if not gpus and not rehearse:
        return {"skipped": "no CUDA GPU"}
    expected = "cuda:0" if gpus else "cpu"
    table = work / "predict.csv"
    table.write_text("text\n" + "".join(f"{t} {i}\n" for i in range(50) for t, _ in EMOTION_ROWS))  # 600 rows
    rows = 600
    found: dict = {"expected": expected}
    head = tiny_config(work / "head", model, work / "data", stage="head", max_steps=20)
    if run("head", ["sft", head], work, log)["rc"] != 0:
        found["head"] = {"error": "stage: head training failed"}
    for device in ("auto", "cpu"):
        for name, config in (("generate_eval", lora), ("head", head)):
            out = Path(config).parent / "run" / f"placement-{device}"
            step = run(name, ["generate-eval", config, f"device={device}", f"eval_output_dir={out}"], work, log)
            if step["rc"] == 0:
                m = json.loads((out / "metrics.json").read_text())
                step.update(device=m.get("device"), examples_per_second=m["examples_per_second"])
            found.setdefault(name, {})[device] = step
        output = work / f"predict-{device}.csv"
        step = run(
            "predict", ["predict", lora, f"device={device}", "--input", str(table), "--output", str(output)], work, log
        )
        step["rows_per_second_with_start_up"] = round(rows / step["seconds"], 1)
        found.setdefault("predict", {})[device] = step
        found.setdefault("serve", {})[device] = serve_once(lora, device, free_port())
    found["ok"] = all(
        found[path]["auto"].get("device") == expected and found[path]["cpu"].get("device") == "cpu"
        for path in ("generate_eval", "head", "serve")
    ) and all(found["predict"][d]["rc"] == 0 for d in ("auto", "cpu"))
    return found


def serve_once(config: str, device: str, port: int) -> dict:
    """Start `instructemo serve`, ask /health for its device, time 20 requests of 30 texts, stop it."""
    import httpx

    server = subprocess.Popen(
        [sys.executable, "-m", "instructemo.cli", "serve", config, f"device={device}", "--port", str(port)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 240
        while time.time() < deadline and server.poll() is None:
            try:
                health = httpx.get(f"{url}/health", timeout=2).json()
                break
            except httpx.TransportError:
                time.sleep(0.5)
        else:
            return {"error": (server.stderr.read() if server.poll() is not None else "did not start")[-400:]}
        texts = [f"i feel fine number {i}" for i in range(30)]
        started = time.perf_counter()
        for _ in range(20):
            httpx.post(f"{url}/v1/classify", json={"input": texts}, timeout=120).raise_for_status()
        return {"device": health.get("device"), "texts_per_second": round(600 / (time.perf_counter() - started), 1)}
    finally:
        server.terminate()
        server.wait(timeout=60)


def missing(*modules: str) -> str | None:
    absent = [m for m in modules if importlib.util.find_spec(m) is None]
    return f"not installed on this machine: {', '.join(absent)}" if absent else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--rehearse-on-cpu", action="store_true", help="without a GPU, run the checks a CPU can run")
    args = parser.parse_args()
    import torch
    from conftest import EMOTION_ROWS, build_tiny_causal_lm, write_emotion_txt
    from result_file import write_result
    from test_end_to_end import tiny_config

    work = args.out / "work"
    shutil.rmtree(work, ignore_errors=True)  # each check starts from nothing
    work.mkdir(parents=True)
    gpus = torch.cuda.device_count()
    result = {
        "command": "bash bench/gpu_check.sh",
        "machine": {
            "gpus": gpus,
            "gpu": torch.cuda.get_device_name(0) if gpus else None,
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
        "packages": {
            m: (importlib.util.find_spec(m) is not None)
            for m in ("flash_attn", "bitsandbytes", "vllm", "deepspeed", "trl", "peft")
        },
        "checks": {},
    }
    log: list[str] = []
    model = build_tiny_causal_lm(work / "model", hidden_size=256, heads=4)
    data = work / "data"
    write_emotion_txt(data / "emotion" / "train.txt", EMOTION_ROWS * 8)
    write_emotion_txt(data / "emotion" / "test.txt")
    common = dict(
        num_train_epochs=6, learning_rate=2e-3, per_device_train_batch_size=8, cutoff_len=64, max_new_tokens=4
    )
    checks = result["checks"]

    bf16 = gpus > 0

    def sft_then_eval(name, reason, cuda_only=False, **extra):
        if not gpus and (cuda_only or not args.rehearse_on_cpu):
            checks[name] = {"skipped": "no CUDA GPU"}
            return None
        if reason:
            checks[name] = {"skipped": reason}
            return None
        config = tiny_config(work / name, model, data, **{**common, **extra})
        check = {"sft": run(name, ["sft", config], work, log)}
        if check["sft"]["rc"] == 0:
            check["generate_eval"] = run(name, ["generate-eval", config], work, log)
            if check["generate_eval"]["rc"] == 0:
                check["metrics"] = metrics(work / name / "run" / "eval" / "metrics.json")
        check["ok"] = all(step.get("rc", 0) == 0 for step in check.values() if isinstance(step, dict))
        checks[name] = check
        return config if check["ok"] else None

    lora = sft_then_eval("fa2_bf16_lora_sft", missing("flash_attn"), cuda_only=True, flash_attn="fa2", bf16=True)
    if lora is None:  # the rest needs a LoRA run: train one with SDPA
        lora = sft_then_eval("sdpa_lora_sft", None, flash_attn="sdpa", bf16=bf16)
    sft_then_eval("qlora_4bit_sft", missing("bitsandbytes"), cuda_only=True, finetuning_type="qlora", bf16=True)
    if lora:
        step = run(
            "score_mode",
            ["generate-eval", lora, "mode=score", f"eval_output_dir={Path(lora).parent / 'run' / 'score'}"],
            work,
            log,
        )
        checks["score_mode"] = {**step, "ok": step["rc"] == 0}
        if step["rc"] == 0:
            checks["score_mode"]["metrics"] = metrics(Path(lora).parent / "run" / "score" / "metrics.json")
        reason = missing("vllm")
        if reason:
            checks["vllm_cuda_lora"] = {"skipped": reason}
        else:
            out = Path(lora).parent / "run" / "vllm"
            step = run(
                "vllm",
                [
                    "generate-eval",
                    lora,
                    "backend=vllm",
                    "vllm_merge_lora=false",
                    "gpu_memory_utilization=0.3",
                    f"eval_output_dir={out}",
                ],
                work,
                log,
            )
            checks["vllm_cuda_lora"] = {**step, "ok": step["rc"] == 0}
            if step["rc"] == 0:
                checks["vllm_cuda_lora"]["metrics"] = metrics(out / "metrics.json")
    if lora:
        checks["placement"] = placement(lora, model, work, log, gpus, args.rehearse_on_cpu)
    nproc = 2 if gpus >= 2 else 1
    sft_then_eval(
        "deepspeed_zero3",
        missing("deepspeed"),
        deepspeed=str(ROOT / "examples/deepspeed/ds_z3.json"),
        nproc_per_node=nproc,
        bf16=bf16,
    )
    if "deepspeed_zero3" in checks:
        checks["deepspeed_zero3"]["processes"] = nproc
    result["all_run_checks_ok"] = all(c.get("ok") for c in checks.values() if "skipped" not in c)
    (args.out / "gpu_check.json").write_text(json.dumps(result, indent=2))
    (args.out / "gpu_check.log").write_text("\n\n".join(log))
    if gpus:
        write_result(ROOT / "bench" / "results" / "gpu_check.json", result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
