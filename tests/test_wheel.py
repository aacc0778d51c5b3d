"""The package as users get it: a wheel and an sdist that pass `twine check`, and the wheel installed into a
fresh virtual environment, used from a folder outside the checkout.

The new environment borrows this one's dependencies (torch, transformers, ...) through a path entry, so the test
takes seconds instead of reinstalling gigabytes. Only directories are borrowed: the editable install's hook is
a .pth file there, which a path entry does not run, so instructemo itself comes from the wheel alone.
"""

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import httpx
import pytest
from conftest import EMOTION_ROWS, free_port, wait_for_health, write_emotion_txt

pytestmark = pytest.mark.slow  # processes, servers and real models: make test runs it, make test-fast does not

ROOT = Path(__file__).resolve().parents[1]


def run(command: list, cwd: Path, env: dict, **kwargs) -> subprocess.CompletedProcess:
    done = subprocess.run([str(c) for c in command], cwd=cwd, env=env, capture_output=True, text=True, **kwargs)
    assert done.returncode == 0, f"{command} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(python of a fresh venv holding only the built wheel, the dist folder, an env without the checkout)."""
    root = tmp_path_factory.mktemp("wheel")
    dist = root / "dist"
    # --no-isolation: the build backend comes from this environment (setuptools), so no download is needed.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    run([sys.executable, "-m", "build", "--no-isolation", "--outdir", dist, ROOT], cwd=root, env=env)
    shutil.rmtree(ROOT / "build", ignore_errors=True)
    venv = root / "venv"
    run([sys.executable, "-m", "venv", venv], cwd=root, env=env)
    python = venv / "bin" / "python"
    site = Path(
        run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], root, env).stdout.strip()
    )
    (site / "borrowed_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    wheel = next(dist.glob("*.whl"))
    run([python, "-m", "pip", "install", "--no-deps", "--no-index", "--quiet", wheel], cwd=root, env=env)
    return python, dist, {**env, "INSTRUCTEMO_CACHE": str(root / "cache"), "INSTRUCTEMO_SHARED_DATA": str(root)}


def test_the_wheel_and_sdist_pass_twine_check_and_ship_the_templates_and_registry(installed):
    python, dist, env = installed
    assert {p.suffix for p in dist.iterdir()} == {".whl", ".gz"}
    run([sys.executable, "-m", "twine", "check", "--strict", *dist.iterdir()], cwd=dist, env=env)
    shown = run(
        [
            python,
            "-c",
            "import instructemo, instructemo.prompts.builder as p, instructemo.data.datasets as d; "
            "print(instructemo.__file__); print(p.builtin_templates()); print(d.REGISTRY_FILE.is_file())",
        ],
        cwd=dist,
        env=env,
    ).stdout.splitlines()
    assert Path(shown[0]).is_relative_to(python.parents[1])  # the wheel's copy, not the checkout's
    assert shown[1] == "['multi_label', 'sentiment', 'single_label']" and shown[2] == "True"


def test_the_installed_package_trains_evaluates_predicts_and_serves_outside_the_checkout(
    installed, tmp_path, tiny_llama
):
    python, _, env = installed
    instructemo = python.parent / "instructemo"
    work = tmp_path / "elsewhere"
    write_emotion_txt(work / "data" / "emotion" / "train.txt")
    write_emotion_txt(work / "data" / "emotion" / "test.txt", EMOTION_ROWS[::2])
    settings = {
        "model_name_or_path": str(tiny_llama),
        "dataset": "emotion",  # the shipped registry's entry, with its default template
        "dataset_dir": "data",
        "output_dir": "run",
        "max_steps": 2,
        "per_device_train_batch_size": 4,
        "learning_rate": 2e-2,
        "lora_rank": 4,
        "cutoff_len": 96,
        "max_new_tokens": 4,
        "bf16": False,
        "mode": "score",
    }
    (work / "config.yaml").write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in settings.items()))
    run([instructemo, "sft", "config.yaml"], cwd=work, env=env)
    run([instructemo, "generate-eval", "config.yaml"], cwd=work, env=env)
    metrics = json.loads((work / "run" / "eval" / "metrics.json").read_text())
    assert metrics["metrics"]["n"] == 6 and metrics["metrics"]["invalid"] == 0
    (work / "in.csv").write_text("id,text\n1,i am so happy\n2,i am scared of the dark\n")
    run([instructemo, "predict", "config.yaml", "--input", "in.csv", "--output", "out.csv"], cwd=work, env=env)
    assert (work / "out.csv").read_text().splitlines()[0] == "id,label,probability"
    port = free_port()
    server = subprocess.Popen(
        [instructemo, "serve", "config.yaml", "--port", str(port)],
        cwd=work,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_for_health(server, f"http://127.0.0.1:{port}")
        answer = httpx.post(f"http://127.0.0.1:{port}/v1/classify", json={"input": ["i am so happy"]}, timeout=60)
        assert answer.status_code == 200 and answer.json()["data"][0]["label"] in {r[1] for r in EMOTION_ROWS}
    finally:
        server.terminate()
        server.wait(timeout=60)
