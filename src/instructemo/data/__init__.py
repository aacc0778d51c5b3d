"""Datasets: reading files and the registry into validated rows, label spaces, splits and stratified folds.

A bad row is caught here, once, with its file:line. `recorded.py` keeps what
data a run trained on, by absolute path and digest, so it is read again the same.
"""

from instructemo.data.datasets import Split, load_registry, load_run_split, load_split, run_spec
from instructemo.data.labels import LabelSpace, binarize
from instructemo.data.records import Record

__all__ = ["Split", "load_registry", "load_run_split", "load_split", "run_spec", "LabelSpace", "binarize", "Record"]
