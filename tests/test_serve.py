"""`instructemo serve`: the HTTP contract, in process (FastAPI's TestClient) and as a real server process.

The classifier is a tiny Llama with a LoRA adapter trained in the test, so every
answer below comes from a real model through the same path `predict` uses.
"""

import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml
from conftest import EMOTION_ROWS, free_port, wait_for_health, write_emotion_txt
from fastapi.testclient import TestClient
from helpers.cli import run_cli, tiny_config

from instructemo.config.schema import load_config
from instructemo.data.labels import LabelSpace
from instructemo.infer import Classified
from instructemo.infer.classifier import Classifier
from instructemo.serve.app import create_app
from instructemo.serve.protocol import results
from instructemo.serve.settings import ServeSettings

TEXTS = ["i feel so happy today", "i am scared of the dark", "this makes me furious", "what a surprise"]


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_llama):
    root = tmp_path_factory.mktemp("serve")
    write_emotion_txt(root / "data" / "emotion" / "train.txt")
    write_emotion_txt(root / "data" / "emotion" / "test.txt", EMOTION_ROWS[::2])
    config = tiny_config(root, tiny_llama, root / "data", max_steps=3, bf16=False, mode="score")
    assert run_cli("sft", config) == 0
    return config


@pytest.fixture(scope="module")
def classifier(run):
    return Classifier(load_config(run, [])).load(progress=False)


@pytest.fixture()
def client(classifier):
    with TestClient(create_app(classifier, ServeSettings(served_model_name="emo", max_texts=8))) as c:
        yield c


def test_classify_answers_in_vllms_shape_with_the_runs_probabilities(client, classifier):
    direct = classifier.classify(TEXTS)
    response = client.post("/v1/classify", json={"model": "emo", "input": TEXTS})
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "list" and body["model"] == "emo" and body["id"].startswith("classify-")
    names = list(classifier.space.names)
    for i, item in enumerate(body["data"]):
        assert item["index"] == i and item["num_classes"] == 6
        assert item["label"] == direct.labels[i][0] == names[int(np.argmax(item["probs"]))]
        assert np.allclose(item["probs"], direct.probabilities[i], atol=1e-5)
        assert abs(sum(item["probs"]) - 1) < 1e-6
    one = client.post("/classify", json={"input": TEXTS[1]}).json()["data"]
    assert len(one) == 1 and one[0]["label"] == body["data"][1]["label"]
    chat = [{"role": "system", "content": "be brief"}, {"role": "user", "content": TEXTS[2]}]
    by_messages = client.post("/v1/classify", json={"messages": chat}).json()["data"][0]
    assert by_messages["label"] == body["data"][2]["label"]


def test_chat_completions_models_health_and_metrics(client):
    chat = client.post(
        "/v1/chat/completions",
        json={"model": "emo", "messages": [{"role": "user", "content": [{"type": "text", "text": TEXTS[0]}]}]},
    )
    assert chat.status_code == 200
    body = chat.json()
    assert body["object"] == "chat.completion"
    message = body["choices"][0]["message"]
    assert message["role"] == "assistant" and message["content"] == body["classification"]["label"]
    assert client.get("/v1/models").json()["data"][0]["id"] == "emo"
    assert client.get("/health").json()["status"] == "ok"
    metrics = client.get("/metrics").text
    assert 'instructemo_requests_total{endpoint="/v1/chat/completions",status="200"} 1.0' in metrics
    assert "instructemo_request_seconds_bucket" in metrics and "instructemo_batch_size_count 1.0" in metrics
    assert "instructemo_texts_total 1.0" in metrics


BAD_REQUESTS = yaml.safe_load((Path(__file__).parent / "bad_inputs" / "requests.yaml").read_text())


def request_body(case: dict) -> bytes:
    if "nest" in case:
        return b'{"input": ' + b"[" * case["nest"] + b"]" * case["nest"] + b"}"
    return bytes.fromhex(case["body_hex"]) if "body_hex" in case else case["body"].encode("utf-8", "surrogatepass")


@pytest.mark.parametrize("case", BAD_REQUESTS, ids=lambda case: case["message"][:40])
def test_bad_requests_get_a_4xx_json_error_that_says_why(client, case):
    response = client.post(case["path"], content=request_body(case), headers={"content-type": "application/json"})
    assert response.status_code == case["status"]
    error = response.json()["error"]
    assert case["message"] in error["message"] and error["code"] == case["status"]


def test_one_clients_bad_request_never_changes_the_answers_of_the_clients_beside_it(classifier):
    """Every bad request of the corpus, sent among six concurrent good ones that share model calls."""
    alone = {t: item for t, item in zip(TEXTS, results(classifier.classify(TEXTS), classifier.space))}
    settings = ServeSettings(max_batch_size=16, max_wait_ms=200, max_texts=8, served_model_name="emo")
    with TestClient(create_app(classifier, settings)) as client:

        def send(job):
            if isinstance(job, dict):
                headers = {"content-type": "application/json"}
                return client.post(job["path"], content=request_body(job), headers=headers)
            return client.post("/v1/classify", json={"input": job})

        for case in BAD_REQUESTS:
            jobs = [TEXTS[0], TEXTS[1], TEXTS[2], case, TEXTS[3], TEXTS[0], TEXTS[1]]
            with ThreadPoolExecutor(len(jobs)) as pool:
                answers = list(pool.map(send, jobs))
            for job, response in zip(jobs, answers):
                if isinstance(job, dict):
                    assert response.status_code == case["status"], case
                else:
                    assert response.status_code == 200, (case, response.text)
                    assert np.allclose(response.json()["data"][0]["probs"], alone[job]["probs"], atol=1e-5)


class SlowModel:
    """The classifier, a little slow (so requests queue into shared batches), failing on texts holding 'poison',
    and noting the size of every model call."""

    def __init__(self, classifier):
        self.real, self.calls = classifier, []

    def __getattr__(self, name):
        return getattr(self.real, name)

    def classify(self, texts):
        self.calls.append(len(texts))
        time.sleep(0.2)
        if any("poison" in t for t in texts):
            raise RuntimeError("secret path /srv/models/x failed")
        return self.real.classify(texts)


def test_a_batch_that_fails_is_retried_request_by_request_so_only_the_bad_one_fails(classifier, caplog):
    model = SlowModel(classifier)
    alone = {t: item for t, item in zip(TEXTS, results(classifier.classify(TEXTS), classifier.space))}
    settings = ServeSettings(max_batch_size=32, max_wait_ms=500)
    with TestClient(create_app(model, settings), raise_server_exceptions=False) as client:
        jobs = TEXTS + ["the poison text"] + TEXTS
        with ThreadPoolExecutor(len(jobs)) as pool:
            answers = list(pool.map(lambda t: client.post("/v1/classify", json={"input": t}), jobs))
    assert max(model.calls) > 1  # requests did share a model call
    for text, response in zip(jobs, answers):
        if "poison" in text:
            error = response.json()["error"]
            assert response.status_code == 500 and "error id" in error["message"] and "/srv" not in error["message"]
            assert error["message"].split("error id ")[1][:12] in caplog.text  # the log holds what happened
        else:
            assert response.status_code == 200
            assert np.allclose(response.json()["data"][0]["probs"], alone[text]["probs"], atol=1e-5)
    assert "secret path /srv/models/x failed" in caplog.text


def test_max_batch_size_caps_every_model_call(classifier):
    model = SlowModel(classifier)
    with TestClient(create_app(model, ServeSettings(max_batch_size=4))) as client:
        response = client.post("/v1/classify", json={"input": [f"i feel fine {i}" for i in range(10)]})
    assert response.status_code == 200 and len(response.json()["data"]) == 10
    assert model.calls == [4, 4, 2]


def test_size_limits_and_wrong_methods(classifier):
    settings = ServeSettings(max_body_bytes=200)
    with TestClient(create_app(classifier, settings)) as client:
        response = client.post("/v1/classify", json={"input": "x" * 300})
        assert response.status_code == 413 and "larger than 200 bytes" in response.json()["error"]["message"]
        chunked = client.post("/v1/classify", content=iter([b'{"input": "', b"y" * 300, b'"}']))  # no content-length
        assert chunked.status_code == 413
        assert client.get("/v1/classify").status_code == 405
        assert client.post("/v1/classify", json={"input": "fine"}).status_code == 200


def test_api_key_is_required_except_for_health_and_metrics(classifier):
    with TestClient(create_app(classifier, ServeSettings(api_key="s3cret"))) as client:
        assert client.post("/v1/classify", json={"input": "hi"}).status_code == 401
        wrong = client.post("/v1/classify", json={"input": "hi"}, headers={"authorization": "Bearer nope"})
        assert wrong.status_code == 401 and "API key" in wrong.json()["error"]["message"]
        right = client.post("/v1/classify", json={"input": "hi"}, headers={"authorization": "Bearer s3cret"})
        assert right.status_code == 200
        assert client.get("/v1/models").status_code == 401
        assert client.get("/health").status_code == 200 and client.get("/metrics").status_code == 200


def test_concurrent_requests_share_model_calls_and_get_their_own_answers(classifier):
    settings = ServeSettings(max_batch_size=16, max_wait_ms=200)
    alone = {t: item for t, item in zip(TEXTS * 3, results(classifier.classify(TEXTS * 3), classifier.space))}
    with TestClient(create_app(classifier, settings)) as client:
        with ThreadPoolExecutor(12) as pool:
            answers = list(pool.map(lambda t: client.post("/v1/classify", json={"input": t}), TEXTS * 3))
        metrics = client.get("/metrics").text
    for text, response in zip(TEXTS * 3, answers):
        assert response.status_code == 200
        assert np.allclose(response.json()["data"][0]["probs"], alone[text]["probs"], atol=1e-5)
    calls = float(next(l.split()[-1] for l in metrics.splitlines() if l.startswith("instructemo_batch_size_count")))
    assert calls < 12  # 12 requests in fewer model calls: they were batched


def test_a_failing_model_answers_500_in_the_error_shape_and_the_server_lives_on(classifier, monkeypatch):
    with TestClient(create_app(classifier, ServeSettings()), raise_server_exceptions=False) as client:
        real = classifier.classify
        monkeypatch.setattr(classifier, "classify", lambda texts: (_ for _ in ()).throw(RuntimeError("weights gone")))
        failed = client.post("/v1/classify", json={"input": "hi"})
        message = failed.json()["error"]["message"]
        assert failed.status_code == 500 and "error id" in message and "weights gone" not in message
        monkeypatch.setattr(classifier, "classify", real)
        assert client.post("/v1/classify", json={"input": "hi"}).status_code == 200


def test_multi_label_and_generate_results_carry_labels_and_invalid():
    space = LabelSpace(("anger", "joy", "fear"), multi_label=True)
    scored = Classified([("joy", "fear"), ()], None, np.array([[0.1, 0.9, 0.6], [0.2, 0.3, 0.1]]))
    first, second = results(scored, space)
    assert first["label"] == "joy" and first["labels"] == ["joy", "fear"] and "invalid" not in first
    assert second["labels"] == [] and second["label"] is None  # no label passed its threshold: none is named
    below = Classified([("fear",)], None, np.array([[0.1, 0.9, 0.6]]))  # joy likelier, but under its threshold
    assert results(below, space)[0]["label"] == "fear"
    generated = Classified([("joy",), None], ["joy", "no idea"], None)
    ok, bad = results(generated, LabelSpace(("anger", "joy")))
    assert ok == {"label": "joy", "probs": None, "num_classes": 2, "invalid": False, "answer": "joy"}
    assert bad["invalid"] and bad["label"] is None and bad["answer"] == "no idea"


@pytest.mark.slow
def test_a_real_server_answers_concurrent_clients_and_drains_on_sigterm(run):
    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "instructemo.cli",
            "serve",
            run,
            "--port",
            str(port),
            "--max-wait-ms",
            "50",
            "--max-texts",
            "64",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "INSTRUCTEMO_API_KEY": "k"},
    )
    url = f"http://127.0.0.1:{port}"
    headers = {"authorization": "Bearer k"}
    try:
        wait_for_health(server, url, seconds=120)
        for _ in range(50):  # malformed bodies never take it down
            assert httpx.post(f"{url}/v1/classify", content=b"{", headers=headers).status_code == 400
        answers, refused, dropped, started = [], [], [], threading.Event()

        def ask(text):
            started.set()
            try:
                answers.append(
                    httpx.post(f"{url}/v1/classify", json={"input": [text] * 64}, headers=headers, timeout=60)
                )
            except httpx.ConnectError as exc:  # never accepted: the server had stopped listening
                refused.append(exc)
            except Exception as exc:  # accepted, then dropped: what draining must never do
                dropped.append(exc)

        threads = [threading.Thread(target=ask, args=(t,)) for t in TEXTS * 4]
        for t in threads:
            t.start()
        started.wait()
        time.sleep(0.2)  # requests are in flight
        server.send_signal(signal.SIGTERM)
        answered_before = len(answers)
        for t in threads:
            t.join()
        # uvicorn drains, then re-raises the signal so the exit status says SIGTERM, as an undrained kill would.
        assert server.wait(timeout=60) == -signal.SIGTERM
        log = server.stdout.read()
        assert "Traceback" not in log and "Cancel" not in log, log
        # Every request the server accepted has its answer; any other error (a dropped connection) fails the thread.
        assert not dropped and len(answers) + len(refused) == len(threads) and len(answers) > answered_before
        assert all(a.status_code == 200 and len(a.json()["data"]) == 64 for a in answers)
    finally:
        if server.poll() is None:
            server.kill()


def test_the_batcher_waits_for_as_many_texts_as_last_time_and_a_lone_client_never_waits():
    """Asserted on the batcher's decisions (texts expected, wait allowed, texts taken), not on the clock."""
    import asyncio

    from instructemo.serve.batcher import Batcher

    def run(texts):
        time.sleep(0.05)
        return [t.upper() for t in texts]

    async def scenario(wait_share: float):
        batcher = Batcher(run, max_batch=8, max_wait=0.5, wait_share=wait_share)
        batcher.start()
        first = await asyncio.gather(*(batcher.submit([f"a{i}"]) for i in range(8)))

        async def late(i):
            await asyncio.sleep(0.01 * i)  # clients that answer a few milliseconds apart
            return await batcher.submit([f"b{i}"])

        second = await asyncio.gather(*(late(i) for i in range(8)))
        await batcher.submit(["alone"])  # 8 expected, as many as the last batch
        await batcher.submit(["alone again"])  # 1 expected: the last batch was one client
        await batcher.stop()
        return first, second, list(batcher.decisions), batcher

    first, second, decisions, batcher = asyncio.run(scenario(wait_share=20))  # 20 x 50 ms: max_wait bounds it
    assert first == [[f"A{i}"] for i in range(8)] and second == [[f"B{i}"] for i in range(8)]
    assert [d.size for d in decisions] == [8, 8, 1, 1]
    assert [d.expected for d in decisions] == [1, 8, 8, 1]  # the late clients were waited for, together
    assert decisions[2].wait_limit == 0.5  # the lone client after a full batch waits at most max_wait, once
    assert decisions[3].expected <= decisions[3].size  # and the next lone one does not wait at all

    async def share_bounds_the_wait():
        batcher = Batcher(run, max_batch=8, max_wait=0.5, wait_share=0.1)
        batcher.start()
        await asyncio.gather(*(batcher.submit([f"a{i}"]) for i in range(8)))
        model_time = batcher.last_run
        await batcher.submit(["alone"])  # 8 expected, but the wait is bounded by a tenth of the batch's model time
        await batcher.stop()
        return list(batcher.decisions), model_time

    decisions, model_time = asyncio.run(share_bounds_the_wait())
    assert decisions[1].expected == 8 and decisions[1].size == 1
    assert decisions[1].wait_limit == 0.1 * model_time < 0.5  # the share, not max_wait, bounds it
