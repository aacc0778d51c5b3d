"""report.html and predict's page come from jinja2 templates with autoescape.

tests/report_pages/ holds each page's structure as the hand-escaped f-string
code wrote it before the templates replaced it: the pages must read the same
(since then a page with probabilities has gained one figure, Calibration).
"""

from pathlib import Path

import pytest
from report_cases import HOSTILE, multi_label_case, predictions_case, single_label_case, structure

from instructemo.report.html import render, render_predictions

PAGES = Path(__file__).parent / "report_pages"


@pytest.mark.parametrize(
    "name, page",
    [
        ("single_label", lambda: render(*single_label_case())),
        ("multi_label", lambda: render(*multi_label_case())),
        ("predictions", lambda: render_predictions(*predictions_case())),
    ],
)
def test_pages_read_as_before_the_templates(name, page):
    html = page()
    assert structure(html) == (PAGES / f"{name}.txt").read_text()
    # The hostile text is shown as text: no tag from it reaches the page, and it appears escaped.
    assert "<b>bold</b>" not in html and "&lt;b&gt;bold&lt;/b&gt;" in html
    assert HOSTILE in structure(html)
