"""The run folder and its files: what a run wrote (its manifest), atomic writes, and what a saved model holds.

Owns every run-file name (`directory.py`), the manifest that makes overwrite
remove only what the run wrote, and JSON/JSONL reading and writing. It knows
nothing of training, data or models: every other package writes through it.
"""
