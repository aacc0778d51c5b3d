"""Reports: an evaluation's files (predictions, metrics, report.md), its HTML page (jinja2 templates) and plots."""

from instructemo.report.evaluation import check_eval_dir, find_evaluation, write_eval_outputs

__all__ = ["check_eval_dir", "find_evaluation", "write_eval_outputs"]
