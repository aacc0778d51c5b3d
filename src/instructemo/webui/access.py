"""What the web UI lets its users reach: who may open it, which files they may send, which folders they may name.

Whoever reaches the page can train and run models on this machine, so the page refuses, before anything runs,
what a stranger on the network could misuse: no login beyond loopback, an upload that is not data (a YAML
config can set trust_remote_code), a run name that is a path.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from instructemo.errors import UserError

log = logging.getLogger(__name__)

# What an upload may be: data, never a config or anything else.
DATA_FILE_TYPES = (".csv", ".tsv", ".jsonl", ".json", ".txt")
RUN_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*")  # a folder name: not ., .., hidden, nor a path
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def check_upload(path: Path) -> None:
    if path.suffix.lower() not in DATA_FILE_TYPES:
        raise UserError(
            f"{path.name}: upload a data file ({', '.join(DATA_FILE_TYPES)}), not {path.suffix or 'a file without a type'}"
        )


def check_run_name(name: str | None) -> None:
    if not RUN_NAME.fullmatch(name or ""):
        raise UserError(
            f"run name {name!r}: use letters, digits, '.', '_' or '-', not starting with '.' "
            "(it names the run's folder under runs/)"
        )


def check_launch(host: str, port: int, workdir: str, max_upload_mb: int, auth: str | None, insecure_no_auth: bool):
    """The page's settings, checked before anything starts: (user, password) or None."""
    if not 0 <= port <= 65535:
        raise UserError(f"--port {port} is not a port number (0-65535)")
    if max_upload_mb < 1:
        raise UserError(f"--max-upload-mb {max_upload_mb}: give at least 1")
    if Path(workdir).exists() and not Path(workdir).is_dir():
        raise UserError(f"--workdir {workdir} is a file; name a folder for the page's uploads, runs and logs")
    credentials = None
    if auth is not None:
        user, _, password = auth.partition(":")
        if not user or not password:
            raise UserError("--auth takes USER:PASSWORD (or set INSTRUCTEMO_WEBUI_AUTH), both non-empty")
        credentials = (user, password)
    if host not in LOOPBACK and credentials is None and not insecure_no_auth:
        raise UserError(
            f"--host {host} opens the page to other machines, and anyone who reaches it can train and run models "
            "here: give --auth USER:PASSWORD (or INSTRUCTEMO_WEBUI_AUTH), or --insecure-no-auth on a network you trust"
        )
    if host not in LOOPBACK and credentials is None:
        log.warning("webui on %s without a login (--insecure-no-auth): anyone who reaches it can use it", host)
    return credentials
