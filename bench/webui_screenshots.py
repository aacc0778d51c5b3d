"""The README's screenshots of `instructemo webui`: a real run, clicked through in Chromium.

Not a measurement. The embedded MiniLM (stage cls) trains on 4000 dair-ai
emotion rows for one epoch (about 2 minutes on 2 CPU cores), is evaluated on the
test split, tried on a text and compared, as a user would do it in the page.

    python bench/webui_screenshots.py        # writes docs/webui/{train,evaluate,try,compare}.png
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from playwright.sync_api import expect, sync_playwright

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from test_webui import pick, set_field  # noqa: E402  (the browser test's own steps)

OUT = ROOT / "docs" / "webui"
PORT = 7871


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="instructemo-webui-"))
    exe = Path(sys.executable).with_name("instructemo")
    server = subprocess.Popen([str(exe), "webui", "--port", str(PORT), "--workdir", str(workdir)], cwd=workdir)
    try:
        url = f"http://127.0.0.1:{PORT}/"
        for _ in range(120):
            try:
                if httpx.get(url, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(1)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(url)
            page.get_by_role("button", name="Check the data").click()
            expect(page.locator("#data-info")).to_contain_text("rows", timeout=120_000)
            pick(page, "model_name_or_path", "all-minilm-l6-v2")
            set_field(page, "run name (output_dir under the webui's runs/)", "minilm-emotion-4k")
            pick(page, "stage", "head")
            pick(page, "finetuning_type", "full")
            for key, value in {"max_samples": "4000", "per_device_train_batch_size": "16", "cutoff_len": "256"}.items():
                field = page.locator(f"#setting-{key} input, #setting-{key} textarea").first
                field.fill(value)
                field.press("Tab")
            page.get_by_role("button", name="Start").click()
            expect(page.locator("#train-status")).to_contain_text("step", timeout=300_000)
            time.sleep(20)  # a live view: the loss so far, the time left
            page.screenshot(path=str(OUT / "train.png"), full_page=True)
            expect(page.locator("#train-status")).to_contain_text("done", timeout=1200_000)

            run = str(workdir / "runs" / "minilm-emotion-4k")
            page.get_by_role("tab", name="Evaluate").click()
            page.get_by_role("button", name="Refresh runs").click()
            pick(page, "run", run)
            page.get_by_role("button", name="Evaluate", exact=True).click()
            expect(page.locator('#report-figures img[alt="Confusion matrix"]')).to_be_visible(timeout=600_000)
            page.screenshot(path=str(OUT / "evaluate.png"), full_page=True)

            page.get_by_role("tab", name="Try").click()
            pick(page, "run", run)
            page.get_by_label("text", exact=True).fill("i finally got the job and i can not stop smiling")
            page.get_by_role("button", name="Classify").click()
            expect(page.locator("#try-chosen")).to_contain_text("predicted:", timeout=120_000)
            page.screenshot(path=str(OUT / "try.png"), full_page=True)

            page.reload()
            page.get_by_role("tab", name="Compare").click()
            pick(page, "evaluated runs", run)
            page.get_by_role("button", name="Compare", exact=True).click()
            expect(page.get_by_role("cell", name="minilm-emotion-4k", exact=True)).to_be_visible(timeout=60_000)
            page.screenshot(path=str(OUT / "compare.png"), full_page=True)
            browser.close()
    finally:
        server.terminate()
        server.wait(30)
        shutil.rmtree(workdir, ignore_errors=True)
    print("wrote", ", ".join(str(p.relative_to(ROOT)) for p in sorted(OUT.glob("*.png"))))


if __name__ == "__main__":
    main()
