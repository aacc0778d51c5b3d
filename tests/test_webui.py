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
from instructemo.tools import describe_dataset, hold_out
from instructemo.webui.jobs import JobQueue

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts" / "webui"
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
    from test_end_to_end import tiny_config

    from instructemo.rundir import RunDir
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


@pytest.fixture()
def webui(tmp_path, tiny_llama):
    port = free_port()
    exe = Path(sys.executable).with_name("instructemo")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    server = subprocess.Popen(
        [str(exe), "webui", "--port", str(port), "--workdir", str(tmp_path / "webui"), "--max-upload-mb", "1"],
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
                break
        except httpx.HTTPError:
            time.sleep(1)
    else:
        server.kill()
        pytest.fail("the webui did not answer within 120 s:\n" + server.communicate()[0][-3000:])
    yield url
    server.terminate()
    server.wait(30)


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
