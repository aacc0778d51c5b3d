"""Loading models and tokenizers (aliases, GGUF, devices), chat-template turns, and batched forward passes.

What training and inference share about a model; neither prompts nor labels.
"""
