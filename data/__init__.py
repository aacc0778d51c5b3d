"""The dataset registry, shipped inside the installed package as instructemo.registry (see pyproject.toml)."""
