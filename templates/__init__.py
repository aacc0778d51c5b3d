"""The prompt templates, shipped inside the installed package as instructemo.templates (see pyproject.toml)."""
