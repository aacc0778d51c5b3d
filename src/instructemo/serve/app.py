"""The HTTP service for one trained classifier (FastAPI on uvicorn, metrics by prometheus-client).

    POST /classify, /v1/classify   vLLM's classify request and response
    POST /v1/chat/completions      OpenAI's chat completions: the answer is the label
    GET  /v1/models                the one model served
    GET  /health                   200 once the model is loaded (with its mode and device)
    GET  /metrics                  Prometheus: requests, latency, batch sizes, texts

Every refusal is a JSON error in OpenAI's shape with a 4xx status; only a
failure of the model itself answers 500.
"""

from __future__ import annotations

import hmac
import logging
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.exceptions import HTTPException

from instructemo.infer.classifier import Classifier
from instructemo.serve.batcher import Batcher
from instructemo.serve.protocol import (
    ApiError,
    chat_response,
    chat_texts,
    check_model,
    classify_response,
    classify_texts,
    models_response,
    parse_json,
    results,
)
from instructemo.serve.settings import ServeSettings

log = logging.getLogger(__name__)

ENDPOINTS = ("/classify", "/v1/classify", "/v1/chat/completions", "/v1/models", "/health", "/metrics")
OPEN_ENDPOINTS = ("/health", "/metrics")  # answered without the API key, as vLLM does


class Metrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "instructemo_requests",
            "HTTP requests by endpoint and status",
            ["endpoint", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "instructemo_request_seconds",
            "Request latency by endpoint",
            ["endpoint"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "instructemo_batch_size",
            "Texts per model call",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
            registry=self.registry,
        )
        self.texts = Counter("instructemo_texts", "Texts classified", registry=self.registry)
        self.in_flight = Gauge("instructemo_requests_in_flight", "Requests being answered", registry=self.registry)


class MetricsMiddleware:
    """Counts every HTTP request and times it (an ASGI middleware, so errors and 404s are counted too)."""

    def __init__(self, app, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        endpoint = scope["path"] if scope["path"] in ENDPOINTS else "other"
        status = 500  # what the client sees when the app raises before it answers
        started = time.perf_counter()

        async def send_and_note(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, send_and_note)
        finally:
            self.metrics.in_flight.dec()
            self.metrics.requests.labels(endpoint, str(status)).inc()
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - started)


class ApiKeyMiddleware:
    """Refuses every request but /health and /metrics without `Authorization: Bearer KEY` (compared in constant time).

    A plain ASGI middleware: starlette's @app.middleware("http") wraps every
    request and response in extra tasks and streams, a cost each request pays.
    """

    def __init__(self, app, key: str):
        self.app, self.key = app, key.encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"] not in OPEN_ENDPOINTS:
            header = dict(scope["headers"]).get(b"authorization", b"")
            scheme, _, token = header.partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(token, self.key):
                error = ApiError(401, "missing or wrong API key: send Authorization: Bearer KEY", None, "auth_error")
                return await JSONResponse(error.body(), status_code=401)(scope, receive, send)
        return await self.app(scope, receive, send)


def create_app(classifier: Classifier, settings: ServeSettings, executor: ThreadPoolExecutor | None = None) -> FastAPI:
    """The service around a loaded classifier; `executor` is the model thread that loaded it, if any."""
    metrics = Metrics()
    space, name = classifier.space, settings.served_model_name

    def classify_batch(texts: list[str]) -> list[dict]:
        items = results(classifier.classify(texts), space)
        metrics.texts.inc(len(texts))
        return items

    batcher = Batcher(
        classify_batch, settings.max_batch_size, settings.max_wait_ms / 1000, metrics.batch_size.observe, executor
    )
    created = int(time.time())

    @asynccontextmanager
    async def lifespan(app):
        batcher.start()
        log.info("%s loaded (%s mode); listening on http://%s:%d", name, classifier.mode, settings.host, settings.port)
        yield
        await batcher.stop()  # uvicorn calls this after the last accepted request has its answer

    app = FastAPI(title="instructemo", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    if settings.api_key is not None:
        app.add_middleware(ApiKeyMiddleware, key=settings.api_key)
    app.add_middleware(MetricsMiddleware, metrics=metrics)

    @app.exception_handler(ApiError)
    async def refused(request: Request, exc: ApiError):
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(HTTPException)
    async def not_routed(request: Request, exc: HTTPException):
        message = {404: f"no endpoint {request.url.path}; see /v1/classify", 405: "method not allowed here"}
        return JSONResponse(
            ApiError(exc.status_code, message.get(exc.status_code, str(exc.detail))).body(), status_code=exc.status_code
        )

    @app.exception_handler(Exception)
    async def failed(request: Request, exc: Exception):  # the model itself failed: say so, in the same shape
        error_id = uuid.uuid4().hex[:12]  # what went wrong is for the server's log, not for the client
        log.error("request %s failed (error id %s)", request.url.path, error_id, exc_info=exc)
        message = f"the classifier failed on this request (error id {error_id}: the server's log has the details)"
        return JSONResponse(ApiError(500, message, None, "server_error").body(), status_code=500)

    async def json_body(request: Request) -> dict:
        limit = settings.max_body_bytes
        too_big = ApiError(413, f"the body is larger than {limit} bytes; send fewer or shorter texts per request")
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise too_big
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise too_big
        data = parse_json(bytes(body))
        check_model(data, name)
        return data

    async def classified(texts: list[str]) -> list[dict]:
        return await batcher.submit(texts)

    @app.post("/classify")
    @app.post("/v1/classify")
    async def classify(request: Request):
        texts = classify_texts(await json_body(request), settings.max_texts)
        return JSONResponse(classify_response(name, await classified(texts)))  # as built: no re-encoding pass

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        texts = chat_texts(await json_body(request), settings.max_texts)
        return JSONResponse(chat_response(name, (await classified(texts))[0], space))

    @app.get("/v1/models")
    async def models():
        return models_response(name, created)

    app.state.draining = False  # set when the server is shutting down (see serve._draining_server)

    @app.get("/health")
    async def health():
        if app.state.draining:
            return JSONResponse({"status": "draining", "model": name}, status_code=503)
        return {"status": "ok", "model": name, "mode": classifier.mode, "device": str(classifier.device)}

    @app.get("/metrics")
    async def prometheus():
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app
