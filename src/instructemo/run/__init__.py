"""The run folder and its files: what a run wrote (its manifest), atomic writes, and what a saved model holds.

Owns every run-file name (`directory.py`), the manifest that makes overwrite
remove only what the run wrote, and JSON/JSONL reading and writing. It knows
nothing of training, data or models: every other package writes through it.
"""

from instructemo.run.directory import RunDir, write_into
from instructemo.run.fileio import file_digest, json_text, jsonl_text, read_json, read_jsonl, write_atomic
from instructemo.run.saved_model import saved_model_kind, weights_digest

__all__ = [
    "RunDir",
    "write_into",
    "file_digest",
    "json_text",
    "jsonl_text",
    "read_json",
    "read_jsonl",
    "write_atomic",
    "saved_model_kind",
    "weights_digest",
]
