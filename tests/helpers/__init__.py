"""What several test modules share: running the CLI on tiny configs, checkpoint selection, brute-force scores,
the model families. Fixtures and the tiny builders live in conftest.py."""
