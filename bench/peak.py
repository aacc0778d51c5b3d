"""The host's matrix-multiply peak at the embedded models' own shapes, in fp32 and bf16, with the benchmarks' threads.

    python bench/peak.py [--threads N] [--tokens 1024,2048] [--seconds 0.5]

A model's training and scoring time is mostly its linear layers: a (tokens x in)
by (in x out) matrix product each. For each embedded model this times
torch.matmul at every one of its layer shapes (attention projections, the MLP,
the output layer over the vocabulary), for a step's worth of tokens, and
reports each shape's TFLOP/s and the model's peak: all its layers' FLOPs over
all their time, the most a step of that model can reach on this host.

A speed benchmark's model FLOPs utilisation (MFU) is then its own FLOP rate
(FLOPs counted by `train_flops_per_token` / `forward_flops_per_token` below)
over this peak, in the same dtype. Writes bench/results/peak_<torch cpu
capability>[_bf16].json with the machine.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from result_file import machine, write_result

ROOT = Path(__file__).resolve().parents[1]

# Each model's shape, from its config.json (SmolLM2-135M-Instruct, Gemma 3 270M, all-MiniLM-L6-v2).
MODELS = {
    "SmolLM2-135M": dict(
        hidden=576, intermediate=1536, heads=9, kv_heads=3, head_dim=64, vocab=49152, layers=30, mlp="gated"
    ),
    "Gemma 3 270M": dict(
        hidden=640, intermediate=2048, heads=4, kv_heads=1, head_dim=256, vocab=262144, layers=18, mlp="gated"
    ),
    "MiniLM-L6": dict(
        hidden=384, intermediate=1536, heads=12, kv_heads=12, head_dim=32, vocab=None, layers=6, mlp="plain"
    ),
}


def layer_shapes(model: dict) -> list[tuple[str, int, int, int]]:
    """(name, in, out, times per model) of every linear layer in one forward pass."""
    h, q, kv = model["hidden"], model["heads"] * model["head_dim"], model["kv_heads"] * model["head_dim"]
    i, n = model["intermediate"], model["layers"]
    shapes = [("q", h, q, n), ("k", h, kv, n), ("v", h, kv, n), ("o", q, h, n)]
    shapes += [("gate", h, i, n), ("up", h, i, n)] if model["mlp"] == "gated" else [("up", h, i, n)]
    shapes.append(("down", i, h, n))
    if model["vocab"]:
        shapes.append(("lm_head", h, model["vocab"], 1))
    return shapes


def forward_flops_per_token(model: dict, context: int) -> float:
    """Multiply-adds x 2 of one token's forward pass: the linear layers, plus attention's scores and mix over
    `context` tokens (QK^T and AV: 2 x heads x head_dim x context each)."""
    linear = sum(2 * k * m * times for _, k, m, times in layer_shapes(model))
    attention = 2 * 2 * model["layers"] * model["heads"] * model["head_dim"] * context
    return float(linear + attention)


def train_flops_per_token(model: dict, context: int) -> float:
    """Forward plus backward (twice the forward: the gradients of the inputs and of the weights), the usual 3x.
    LoRA skips most weight gradients, so for a LoRA run this overcounts: its MFU is an upper bound."""
    return 3 * forward_flops_per_token(model, context)


def matmul_tflops(tokens: int, k: int, m: int, dtype: torch.dtype, seconds: float) -> float:
    a = torch.randn(tokens, k, dtype=dtype)
    b = torch.randn(k, m, dtype=dtype)
    for _ in range(3):
        torch.matmul(a, b)
    calls, started = 0, time.perf_counter()
    while True:
        torch.matmul(a, b)
        calls += 1
        elapsed = time.perf_counter() - started
        if elapsed >= seconds and calls >= 3:
            break
    return 2 * tokens * k * m * calls / elapsed / 1e12


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads (default: torch's)")
    parser.add_argument("--tokens", default="1024,2048", help="tokens per product (a step's rows x their length)")
    parser.add_argument("--seconds", type=float, default=0.5, help="time per shape and dtype")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    host = machine()
    dtypes = {"fp32": torch.float32}
    if host["cpu_bf16"]:
        dtypes["bf16"] = torch.bfloat16  # elsewhere torch emulates bf16, hundreds of times slower: not a peak
    record = {"benchmark": "torch.matmul TFLOP/s at the embedded models' layer shapes", "threads": args.threads}
    models = {}
    for name, model in MODELS.items():
        per_tokens = {}
        for tokens in (int(t) for t in args.tokens.split(",")):
            per_dtype = {}
            for label, dtype in dtypes.items():
                shapes, flops, seconds = {}, 0.0, 0.0
                for layer, k, m, times in layer_shapes(model):
                    rate = matmul_tflops(tokens, k, m, dtype, args.seconds)
                    shapes[f"{layer} {k}x{m}"] = round(rate, 3)
                    flops += 2 * tokens * k * m * times
                    seconds += 2 * tokens * k * m * times / (rate * 1e12)
                per_dtype[label] = {"model_peak_tflops": round(flops / seconds / 1e12, 3), "per_layer_tflops": shapes}
                print(f"{name}, {tokens} tokens, {label}: {per_dtype[label]['model_peak_tflops']} TFLOP/s", flush=True)
            per_tokens[str(tokens)] = per_dtype
        models[name] = {
            "shape": model,
            "forward_flops_per_token_at_128": forward_flops_per_token(model, 128),
            "by_tokens": per_tokens,
        }
    record.update(
        models=models,
        command=" ".join(["python", "bench/peak.py", *__import__("sys").argv[1:]]),
        machine=host,
        measured=time.strftime("%Y-%m-%d"),
    )
    suffix = host["torch_cpu_capability"].lower() + ("_bf16" if host["cpu_bf16"] else "")
    write_result(ROOT / "bench" / "results" / f"peak_{suffix}.json", record)


if __name__ == "__main__":
    main()
