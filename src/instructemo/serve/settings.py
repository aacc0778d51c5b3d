"""The server's settings and their defaults: the one place `instructemo serve`'s options and the app read them.

Kept apart from app.py, which needs fastapi: the command line builds its
options from these defaults without the serving libraries installed.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ServeSettings:
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    max_batch_size: int = 32  # texts per model call
    max_wait_ms: float = 500.0  # at most this long (and a tenth of the last batch's time) a batch waits for more
    max_body_bytes: int = 1 << 20
    max_texts: int = 256  # texts per request
    served_model_name: str = "instructemo"
