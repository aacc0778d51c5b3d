"""`instructemo webui`: train, evaluate, try and compare classifiers from the browser (Gradio).

A thin layer over the CLI: see app.py for the page and jobs.py for how the
CLI's verbs run behind it.
"""
