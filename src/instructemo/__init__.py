"""instructemo: instruction-tune language models to classify emotion and sentiment."""

__version__ = "0.1.0"
