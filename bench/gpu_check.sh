#!/usr/bin/env bash
# The GPU check, as prepared for the `device` tool's machine (one NVIDIA GPU, no network):
#   run: bash bench/gpu_check.sh     carry: [".whl"]     timeout_s: 480
# Its image holds torch, transformers, peft and accelerate. The rest travels as wheels in .whl
# (made here by `bash bench/gpu_wheels.sh`); vLLM (about 400 MB) and flash-attn (no wheel on PyPI)
# cannot travel within the tool's 64 MiB, so those checks say skipped unless the machine has them.
# Writes $OUT/gpu_check.json (and bench/results/gpu_check.json when a GPU ran it).
# Without a GPU, `bash bench/gpu_check.sh --rehearse-on-cpu` runs what a CPU can, to check the script itself.
set -u
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/saves/gpu-check}"
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "no nvidia-smi"
if compgen -G ".whl/*" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl 2>&1 | tail -3
    if compgen -G ".whl/deepspeed-*.tar.gz" >/dev/null; then  # an sdist: built here, without its CUDA ops
        python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-cache-dir --target /tmp/site .whl/deepspeed-*.tar.gz 2>&1 | tail -3
    fi
    export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD/src:${PYTHONPATH:-}" PYTHONUNBUFFERED=1 DS_BUILD_OPS=0
timeout 460 python3 bench/gpu_check.py --out "$OUT" "$@"
