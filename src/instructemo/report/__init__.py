"""Reports: an evaluation's files (predictions, metrics, report.md), its HTML page (jinja2 templates) and plots."""
