"""Inference back-ends. Each turns chat prompts into answer texts."""
