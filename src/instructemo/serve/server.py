"""Run the server: load the run once, check the settings, serve with uvicorn until SIGTERM or Ctrl-C, drain, stop."""

from __future__ import annotations

import asyncio
import logging
import os

from instructemo.config.schema import Config
from instructemo.errors import UserError
from instructemo.infer.classifier import Classifier
from instructemo.serve.app import create_app
from instructemo.serve.batcher import model_thread
from instructemo.serve.settings import ServeSettings

log = logging.getLogger(__name__)

API_KEY_VARIABLE = "INSTRUCTEMO_API_KEY"
# After SIGTERM, how long the server goes on accepting (health says "draining") before it stops listening.
DRAIN_GRACE_SECONDS = 0.5


def run_serve(cfg: Config, settings: ServeSettings) -> None:
    import uvicorn

    if settings.api_key is None and os.environ.get(API_KEY_VARIABLE):
        settings = ServeSettings(**{**vars(settings), "api_key": os.environ[API_KEY_VARIABLE]})
    check_settings(settings)
    if settings.host not in ("127.0.0.1", "localhost", "::1") and settings.api_key is None:
        log.warning(
            "listening on %s without an API key: anyone who reaches this machine can use the model; "
            "set %s or --api-key",
            settings.host,
            API_KEY_VARIABLE,
        )
    classifier = Classifier(cfg)
    thread = model_thread()  # the model loads in the thread that will run it (see batcher)
    thread.submit(classifier.load, progress=False).result()
    app = create_app(classifier, settings, thread)
    server = _draining_server(uvicorn.Config(app, host=settings.host, port=settings.port, log_level="warning"))
    try:
        server.run()
    except SystemExit:  # uvicorn exits when it cannot bind, after logging why
        if server.started:
            raise
        raise UserError(
            f"could not listen on {settings.host}:{settings.port}; is the port in use? pick another --port"
        ) from None


def _draining_server(config):
    """uvicorn's server, with one change to its shutdown. On SIGTERM, /health answers 503 "draining" at once
    (a load balancer stops sending), and the server goes on accepting for `DRAIN_GRACE_SECONDS` before it
    closes its socket: closing at once would reset connections that the kernel had accepted but the server not
    yet read, dropping requests already on their way. Then uvicorn waits until every request in progress has
    its answer, and only then stops the model."""
    import uvicorn

    class DrainingServer(uvicorn.Server):
        async def shutdown(self, sockets=None):
            self.config.app.state.draining = True
            await asyncio.sleep(DRAIN_GRACE_SECONDS)
            await super().shutdown(sockets)

    return DrainingServer(config)


def check_settings(settings: ServeSettings) -> None:
    for key in ("max_batch_size", "max_body_bytes", "max_texts"):
        if getattr(settings, key) < 1:
            raise UserError(f"--{key.replace('_', '-')} must be at least 1")
    if settings.max_wait_ms < 0:
        raise UserError("--max-wait-ms must be 0 or more")
    if not 0 <= settings.port <= 65535:
        raise UserError(f"--port {settings.port} is not a port number (0-65535)")
    if settings.api_key is not None and not settings.api_key.strip():
        raise UserError("the API key is empty; give a non-empty key or none")
