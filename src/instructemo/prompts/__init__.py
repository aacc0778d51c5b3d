"""Prompts: the jinja2 templates rendered into chat turns cut to cutoff_len, few-shot examples, and parsing answers."""
