"""`instructemo webui`, driven in the system Chromium: a CSV in, a trained, evaluated and tried model out.

Screenshots of each tab go to test-artifacts/webui/ (git-ignored); the README's
come from there.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from conftest import EMOTION_ROWS, free_port

from instructemo.errors import UserError
from instructemo.verbs.tools import describe_dataset, hold_out
from instructemo.webui.jobs import JobQueue

pytestmark = pytest.mark.slow  # processes, servers and real models: make test runs it, make test-fast does not

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts" / "webui"
UPLOAD_CHOICE = "(an uploaded file)"
CHROMIUM = shutil.which("chromium")


def write_csv(path: Path, copies: int = 4) -> Path:
    """EMOTION_ROWS, each label `copies` times over with a numbered variant of its texts."""
    lines = ["text,label"] + [f'"{text} {k}",{label}' for k in range(copies) for text, label in EMOTION_ROWS]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_a_held_out_split_keeps_every_label_in_proportion_and_never_reuses_a_name(tmp_path):
    source = write_csv(tmp_path / "mine.csv")
    info = describe_dataset(str(source), str(tmp_path))
    assert (info["text_column"], info["label_column"], info["rows"]) == ("text", "label", 4 * len(EMOTION_ROWS))
    train, test = hold_out(str(source), str(tmp_path), 0.25, 42, tmp_path / "out")
    test_rows = [json.loads(line) for line in test.read_text().splitlines()]
    train_rows = [json.loads(line) for line in train.read_text().splitlines()]
    assert len(test_rows) + len(train_rows) == info["rows"]
    assert {r["text"] for r in test_rows}.isdisjoint(r["text"] for r in train_rows)
    assert sorted({r["label"] for r in test_rows}) == sorted(info["label_counts"])  # every label, a quarter of it
    again = hold_out(str(source), str(tmp_path), 0.25, 42, tmp_path / "out")
    assert again == (train, test) and test.read_text() == "\n".join(json.dumps(r) for r in test_rows) + "\n"
    other = hold_out(str(source), str(tmp_path), 0.5, 42, tmp_path / "out")
    assert other[1] != test  # another split is another file
    with pytest.raises(UserError, match="too few"):
        hold_out(str(write_csv(tmp_path / "one.csv", copies=1)), str(tmp_path), 0.2, 42, tmp_path / "out")


def test_a_failed_job_reports_the_clis_one_line_error_and_a_stopped_one_ends(tmp_path):
    queue = JobQueue(tmp_path / "jobs")
    failed = queue.wait(queue.submit("sft", [str(tmp_path / "missing.yaml")]), timeout=120)
    assert failed.state == "failed" and failed.error().startswith("config file") and "not found" in failed.error()
    waiting = queue.submit("datasets", [])
    queue.stop(waiting.id)  # a queued job is dropped before it starts
    assert queue.wait(waiting, timeout=5).state == "stopped" and waiting.started is None


def test_stop_ends_a_training_job_cleanly_and_its_run_can_resume(tmp_path, tiny_llama, emotion_dir):
    from helpers.cli import tiny_config

    from instructemo.run.directory import RunDir
    from instructemo.webui.jobs import live_progress

    config = tiny_config(tmp_path, tiny_llama, emotion_dir, num_train_epochs=500)
    queue = JobQueue(tmp_path / "jobs")
    ignored = signal.signal(signal.SIGINT, signal.SIG_IGN)  # as under nohup or `&`: the job inherits it
    try:
        job = queue.submit("sft", [config], output_dir=tmp_path / "run")
        queue.wait_started(job)
    finally:
        signal.signal(signal.SIGINT, ignored)
    deadline = time.monotonic() + 120
    while live_progress(job.output_dir)["step"] < 4 and time.monotonic() < deadline:
        time.sleep(0.5)
    progress = live_progress(job.output_dir)
    assert progress["max_steps"] == 1500 and progress["eta_seconds"] > 0
    queue.stop(job.id)
    queue.wait(job, timeout=60)
    assert job.process.returncode == 130 and job.state == "stopped"  # SIGINT: the CLI's own clean exit
    assert "instructemo: interrupted" in job.log_path.read_text()
    assert not RunDir(tmp_path / "run").is_complete()  # nothing passes as finished; resume: auto continues it


def start_webui(tmp_path, *options: str) -> tuple[subprocess.Popen, str]:
    """`instructemo webui` in tmp_path (its workdir tmp_path/webui), once it answers: (process, url)."""
    port = free_port()
    exe = Path(sys.executable).with_name("instructemo")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    server = subprocess.Popen(
        [str(exe), "webui", "--port", str(port), "--workdir", str(tmp_path / "webui"), *options],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return server, url
        except httpx.HTTPError:
            time.sleep(1)
    server.kill()
    pytest.fail("the webui did not answer within 120 s:\n" + server.communicate()[0][-3000:])


@pytest.fixture()
def webui(tmp_path, tiny_llama):
    server, url = start_webui(tmp_path, "--max-upload-mb", "1")
    yield url
    server.terminate()
    server.wait(30)


@pytest.mark.parametrize(
    "workdir, options, message",
    [
        ("w", ["--host", "0.0.0.0"], "--host 0.0.0.0 opens the page to other machines"),
        ("w", ["--auth", "admin"], "--auth takes USER:PASSWORD"),
        ("w", ["--port", "99999"], "--port 99999 is not a port number"),
        ("w", ["--max-upload-mb", "-5"], "--max-upload-mb -5: give at least 1"),
        ("file", [], "is a file; name a folder"),
    ],
)
def test_the_page_refuses_unsafe_or_impossible_settings_in_one_line(tmp_path, capsys, workdir, options, message):
    from helpers.cli import run_cli

    (tmp_path / "file").write_text("x")
    assert run_cli("webui", "--workdir", tmp_path / workdir, *options) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "w").exists()


def test_a_login_guards_the_page_and_its_api(tmp_path):
    from gradio_client import Client

    server, url = start_webui(tmp_path, "--auth", "ann:s3cret")
    try:
        assert httpx.get(url + "config").status_code == 401 and httpx.get(url + "gradio_api/info").status_code == 401
        with pytest.raises(Exception, match="credentials were not provided"):
            Client(url, verbose=False)
        with pytest.raises(ValueError, match="Could not login"):
            Client(url, auth=("ann", "wrong"), verbose=False)
        assert (
            "/evaluate"
            in Client(url, auth=("ann", "s3cret"), verbose=False).view_api(return_format="dict", print_info=False)[
                "named_endpoints"
            ]
        )
    finally:
        server.terminate()
        server.wait(30)


def test_the_page_takes_only_its_own_runs_data_files_and_folder_names(tmp_path):
    """Over HTTP, as any client of the page could send it: typed paths, a YAML upload, run names that escape."""
    from gradio_client import Client, handle_file

    from instructemo.webui.app import FIELDS, SETTINGS

    secret = tmp_path / "elsewhere"
    secret.mkdir()
    (tmp_path / "evil.yaml").write_text("trust_remote_code: true\n")
    (tmp_path / "evil.py").write_text("print('hi')\n")
    server, url = start_webui(tmp_path)
    try:
        client = Client(url, verbose=False)
        for run in (str(secret), "../elsewhere", str(tmp_path / "evil.yaml")):
            for endpoint, args in (("/evaluate", (run, "auto")), ("/try_text", (run, "hi"))):
                with pytest.raises(Exception, match="is not a finished run of this page"):
                    client.predict(*args, api_name=endpoint)
        with pytest.raises(Exception, match="is not a finished run of this page"):
            client.predict(str(secret), handle_file(write_csv(tmp_path / "texts.csv")), api_name="/predict_file")
        with pytest.raises(Exception, match="Invalid file type|upload a data file"):
            client.predict(str(secret), handle_file(tmp_path / "evil.yaml"), api_name="/predict_file")
        for upload in ("evil.yaml", "evil.py"):
            with pytest.raises(Exception, match="Invalid file type|upload a data file"):
                client.predict(UPLOAD_CHOICE, handle_file(tmp_path / upload), "", "", api_name="/describe")
        settings = ["" if k == "max_samples" else FIELDS[k].default for k in SETTINGS]
        for name in (".", "..", "a/b", ".hidden", "../up"):
            with pytest.raises(Exception, match="run name"):
                client.predict(
                    "emotion", None, "", "", 0.2, "smollm2-135m-instruct", name, *settings, api_name="/start"
                )
        assert not (tmp_path / "webui" / "data").exists() and not (tmp_path / "webui" / "configs").exists()
    finally:
        server.terminate()
        server.wait(30)


def test_an_upload_of_another_type_is_refused_and_kept_names_cannot_be_guessed(tmp_path):
    from instructemo.webui.app import WebUI

    (tmp_path / "notes.yaml").write_text("trust_remote_code: true\n")
    data = write_csv(tmp_path / "mine.csv")
    one, other = WebUI(tmp_path / "a", "data"), WebUI(tmp_path / "b", "data")
    with pytest.raises(UserError, match="upload a data file"):
        one.keep_upload(str(tmp_path / "notes.yaml"))
    assert one.keep_upload(str(data)) == one.keep_upload(str(data))  # the same file twice: one copy
    assert one.keep_upload(str(data)).name != other.keep_upload(str(data)).name  # salted per server


def test_a_job_that_cannot_start_fails_alone_and_the_queue_goes_on(tmp_path, monkeypatch):
    queue = JobQueue(tmp_path / "jobs")
    real = subprocess.Popen
    calls = []

    def popen_fails_once(*args, **kwargs):
        calls.append(args)
        if len(calls) == 1:
            raise OSError(24, "Too many open files")
        return real(*args, **kwargs)

    monkeypatch.setattr(subprocess, "Popen", popen_fails_once)
    broken = queue.submit("datasets", [])
    after = queue.submit("datasets", [])
    assert queue.wait(broken, timeout=60).state == "failed" and "Too many open files" in broken.error()
    assert queue.wait(after, timeout=120).state == "done"


def test_stop_reaches_every_process_of_the_job(tmp_path):
    """A job whose process started another (torchrun's workers): Stop ends both."""
    queue = JobQueue(tmp_path / "jobs")
    child_pid = tmp_path / "child.pid"
    script = (
        "import subprocess, sys, time, pathlib; "
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)']); "
        f"pathlib.Path({str(child_pid)!r}).write_text(str(child.pid)); time.sleep(300)"
    )
    queue.command_line = lambda job: [sys.executable, "-c", script]
    job = queue.submit("sft", ["a.yaml"])
    deadline = time.monotonic() + 60
    while not child_pid.is_file() and time.monotonic() < deadline:
        time.sleep(0.1)
    pid = int(child_pid.read_text())
    queue.stop(job.id)
    assert queue.wait(job, timeout=60).state == "stopped"
    deadline = time.monotonic() + 10
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(pid)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/stat")
    return not (status.is_file() and status.read_text().split()[2] == "Z")  # a zombie has ended


def pick(page, label: str, option: str) -> None:
    """Choose `option` in the Gradio dropdown labelled `label`."""
    page.get_by_label(label, exact=True).filter(visible=True).click()
    page.get_by_role("option", name=option).first.click()


def set_field(page, label: str, value: str) -> None:
    field = page.get_by_label(label, exact=True).filter(visible=True)
    field.fill(value)
    field.press("Tab")


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium)")
def test_a_csv_becomes_a_trained_evaluated_and_tried_model_in_the_browser(tmp_path, tiny_llama, webui):
    from playwright.sync_api import expect, sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    csv = write_csv(tmp_path / "my_texts.csv")
    too_big = httpx.post(webui + "gradio_api/upload", files={"files": ("big.csv", b"x" * (2 << 20))}, timeout=60)
    assert too_big.status_code == 413 and "maximum allowed size" in too_big.text  # --max-upload-mb 1
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(webui)
        page.get_by_role("button", name="Check the data").wait_for(timeout=60_000)

        # Train: the file, its columns and label counts, the settings, Start, the loss curve.
        pick(page, "dataset", "(an uploaded file)")
        page.locator("input[type=file]").first.set_input_files(str(csv))
        page.get_by_role("button", name="Check the data").click()
        expect(page.get_by_text(f"{4 * len(EMOTION_ROWS)} rows")).to_be_visible(timeout=60_000)
        expect(page.locator("#data-info")).to_contain_text("text column text, label column label")
        set_field(page, "model_name_or_path", str(tiny_llama))
        set_field(page, "run name (output_dir under the webui's runs/)", "tiny")
        for key, value in {
            "learning_rate": "0.02",
            "num_train_epochs": "3",
            "per_device_train_batch_size": "4",
            "lora_rank": "4",
            "cutoff_len": "96",
            "logging_steps": "1",
        }.items():
            set_field(page, key, value)
        page.get_by_role("button", name="Start").click()
        status = page.locator("#train-status")
        expect(status).to_contain_text("done", timeout=240_000)
        expect(page.locator("#loss-plot canvas, #loss-plot svg").first).to_be_visible(timeout=30_000)
        config = yaml_config(tmp_path / "webui" / "configs" / "tiny.yaml")
        assert config["dataset"].endswith("-train.jsonl") and config["eval_dataset"].endswith("-test.jsonl")
        page.screenshot(path=str(ARTIFACTS / "train.png"), full_page=True)

        # Evaluate: score mode, the report's figures.
        page.get_by_role("tab", name="Evaluate").click()
        page.get_by_role("button", name="Refresh runs").click()
        pick(page, "run", str(tmp_path / "webui" / "runs" / "tiny"))
        pick(page, "mode", "score")
        page.get_by_role("button", name="Evaluate", exact=True).click()
        figures = page.locator("#report-figures")
        expect(figures.locator('img[alt="Confusion matrix"]')).to_be_visible(timeout=240_000)
        expect(figures.locator('img[alt="Calibration"]')).to_be_visible()
        page.screenshot(path=str(ARTIFACTS / "evaluate.png"), full_page=True)

        # Try: a text in, its labels with probabilities out.
        page.get_by_role("tab", name="Try").click()
        pick(page, "run", str(tmp_path / "webui" / "runs" / "tiny"))
        page.get_by_label("text", exact=True).fill("i feel so happy and cheerful today")
        page.get_by_role("button", name="Classify").click()
        expect(page.locator("#try-chosen")).to_contain_text("predicted:", timeout=120_000)
        expect(page.locator("#try-label")).to_contain_text("%")
        page.screenshot(path=str(ARTIFACTS / "try.png"), full_page=True)
        texts = tmp_path / "unlabelled.csv"
        texts.write_text("id,text\n1,i am glad\n2,i am scared\n3,so angry\n", encoding="utf-8")
        page.locator("#try-file input[type=file]").set_input_files(str(texts))
        page.get_by_role("button", name="Predict the file").click()
        expect(page.locator("#predict-status")).to_contain_text("done", timeout=120_000)
        written = list((tmp_path / "webui" / "predictions").glob("unlabelled-*-tiny-*.csv"))
        assert len(written) == 1 and len(written[0].read_text().splitlines()) == 4  # a header and the three rows

        # Compare: the evaluated run in compare's table.
        page.get_by_role("tab", name="Compare").click()
        page.reload()
        page.get_by_role("tab", name="Compare").click()
        pick(page, "evaluated runs", str(tmp_path / "webui" / "runs" / "tiny"))
        page.get_by_role("button", name="Compare", exact=True).click()
        expect(page.get_by_role("cell", name="tiny", exact=True)).to_be_visible(timeout=60_000)
        page.screenshot(path=str(ARTIFACTS / "compare.png"), full_page=True)

        # Audit: the run's recipe cross-fitted on its data, cleanlab's flags in tables and files.
        page.get_by_role("tab", name="Audit").click()
        pick(page, "run (its data and recipe)", str(tmp_path / "webui" / "runs" / "tiny"))
        set_field(page, "folds", "2")
        page.get_by_role("button", name="Audit", exact=True).click()
        expect(page.locator("#audit-status")).to_contain_text("done", timeout=300_000)
        expect(page.get_by_text("flagged rows per label")).to_be_visible()
        audit = tmp_path / "webui" / "audits" / "tiny" / "audit"
        assert (audit / "issues.csv").is_file() and (audit / "audit.html").is_file()
        assert json.loads((audit / "summary.json").read_text())["audit"]["mode"] == "score"
        page.screenshot(path=str(ARTIFACTS / "audit.png"), full_page=True)

        # A bad setting: the CLI's one-line message in the page, no traceback.
        page.get_by_role("tab", name="Train").click()
        set_field(page, "run name (output_dir under the webui's runs/)", "bad name/..")
        page.get_by_role("button", name="Start").click()
        expect(page.get_by_text("instructemo: error: run name").first).to_be_visible(timeout=30_000)
        set_field(page, "run name (output_dir under the webui's runs/)", "tiny")  # the finished run: kept
        page.get_by_role("button", name="Start").click()
        expect(page.get_by_text("already holds a finished training run").first).to_be_visible(timeout=30_000)
        assert "Traceback" not in page.content()
        assert yaml_config(tmp_path / "webui" / "configs" / "tiny.yaml") == config  # its YAML untouched
        browser.close()


def yaml_config(path: Path) -> dict:
    import yaml

    return yaml.safe_load(path.read_text())
