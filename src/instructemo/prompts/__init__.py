"""Prompts: the jinja2 templates rendered into chat turns cut to cutoff_len, few-shot examples, and parsing answers."""

from instructemo.prompts.builder import PromptBuilder, load_template
from instructemo.prompts.parse import parse_labels

__all__ = ["PromptBuilder", "load_template", "parse_labels"]
