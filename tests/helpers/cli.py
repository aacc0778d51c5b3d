"""The CLI as a test calls it, and the tiny config every end-to-end test starts from."""

import json

from instructemo.cli import main


def run_cli(*args) -> int:
    return main([str(a) for a in args])


def tiny_config(tmp_path, tiny_llama, dataset_dir, **extra) -> str:
    values = {
        "model_name_or_path": str(tiny_llama),
        "dataset": "emotion",
        "dataset_dir": str(dataset_dir),
        "output_dir": str(tmp_path / "run"),
        "cutoff_len": 96,
        "per_device_train_batch_size": 4,
        "learning_rate": 2e-2,
        "num_train_epochs": 5,
        "logging_steps": 1,
        "lora_rank": 4,
        "per_device_eval_batch_size": 4,
        "max_new_tokens": 4,
        "warmup_steps": 0,
        **extra,
    }
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "config.yaml"
    path.write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in values.items()))
    return str(path)
