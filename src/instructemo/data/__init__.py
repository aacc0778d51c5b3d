"""Datasets: reading files and the registry into validated rows, label spaces, splits and stratified folds.

A bad row is caught here, once, with its file:line. `recorded.py` keeps what
data a run trained on, by absolute path and digest, so it is read again the same.
"""
