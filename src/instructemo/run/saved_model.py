"""What a trained run's folder holds: a full model or an adapter, its weights' digest, its stage."""

from __future__ import annotations

import hashlib
from pathlib import Path

from instructemo.run.directory import ADAPTER_CONFIG_FILE, MODEL_CONFIG_FILE, TOKENIZER_CONFIG_FILE
from instructemo.run.fileio import file_digest, read_json


def saved_model_kind(directory: Path | None) -> str | None:
    """What a trained run's directory holds: "full" (a fine-tuned model, config.json), "adapter" (a peft adapter for
    the base model, adapter_config.json), or None. The one answer every engine and verb uses."""
    if directory is None:
        return None
    if (directory / MODEL_CONFIG_FILE).is_file():
        return "full"
    if (directory / ADAPTER_CONFIG_FILE).is_file():
        return "adapter"
    return None


def weights_digest(directory: Path) -> str:
    """One digest of a saved model's weight files (adapter, full model or head): it changes when a run is retrained."""
    files = sorted(directory.glob("*.safetensors")) + sorted(directory.glob("*.bin"))
    return hashlib.sha256(" ".join(f"{f.name}:{file_digest(f)}" for f in files).encode()).hexdigest()[:16]


def adapter_settings(directory: Path) -> dict:
    """The adapter's peft config (peft_type, r, ...)."""
    return read_json(directory / ADAPTER_CONFIG_FILE)


def has_tokenizer(directory: Path) -> bool:
    return (directory / TOKENIZER_CONFIG_FILE).is_file()
