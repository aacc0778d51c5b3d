"""Scoring a trained run: generate-eval (`generate.py`), calibrate's per-label thresholds, and the metrics.

Training uses the metrics and calibration to select checkpoints; verbs such
as cv and ensemble build on generate-eval.
"""
