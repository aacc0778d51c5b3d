"""predict at any scale: streamed input, resumable output, shards, memory that does not grow with the file."""

import csv
import json
import signal
import subprocess
import sys
import time

import pytest
from conftest import EMOTION_ROWS, write_emotion_txt
from helpers.cli import run_cli, tiny_config

from instructemo.config.schema import load_config
from instructemo.errors import UserError
from instructemo.verbs.predict import parse_shard, run_predict

pytestmark = pytest.mark.slow  # processes, servers and real models: make test runs it, make test-fast does not

WORDS = ["happy", "sad", "scared", "angry", "surprised", "loved", "calm", "tired"]


def write_table(path, rows: int, start: int = 0):
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "text"])
        for i in range(start, start + rows):
            writer.writerow([f"r{i}", f"i feel {WORDS[i % len(WORDS)]} and {WORDS[(i * 7) % len(WORDS)]} {i}"])
    return path


def same_predictions(written: bytes, expected: bytes) -> bool:
    """The same rows, ids and labels, in the same order; probabilities equal but for float noise from batching."""
    a, b = (list(csv.DictReader(x.decode().splitlines())) for x in (written, expected))
    assert [(r["id"], r["label"]) for r in a] == [(r["id"], r["label"]) for r in b]
    assert all(abs(float(x["probability"]) - float(y["probability"])) < 1e-5 for x, y in zip(a, b))
    return True


@pytest.fixture(scope="module")
def config(tmp_path_factory, tiny_llama):
    root = tmp_path_factory.mktemp("predict-scale")
    write_emotion_txt(root / "data" / "emotion" / "train.txt")
    write_emotion_txt(root / "data" / "emotion" / "test.txt", EMOTION_ROWS[::2])
    path = tiny_config(root, tiny_llama, root / "data", max_steps=2, bf16=False, mode="score")
    assert run_cli("sft", path) == 0
    return path


@pytest.fixture(scope="module")
def reference(config, tmp_path_factory):
    """300 rows labelled in one uninterrupted run."""
    root = tmp_path_factory.mktemp("reference")
    source = write_table(root / "in.csv", 300)
    run_predict(load_config(config, []), source, root / "out.csv", chunk_rows=64)
    return source, (root / "out.csv").read_bytes()


def test_a_run_killed_between_writing_and_checkpointing_resumes_without_losing_or_doubling_a_row(
    config, reference, tmp_path, monkeypatch
):
    source, expected = reference
    out = tmp_path / "out.csv"
    calls = []

    def dies_on_the_third_checkpoint(path, text):
        if path.name.endswith(".progress.json") and len(calls) == 2:
            raise KeyboardInterrupt  # the chunk is in out.csv.partial, its checkpoint is not
        calls.append(path)
        write(path, text)

    import instructemo.verbs.predict as predict

    write = predict.write_atomic
    monkeypatch.setattr(predict, "write_atomic", dies_on_the_third_checkpoint)
    with pytest.raises(KeyboardInterrupt):
        run_predict(load_config(config, []), source, out, chunk_rows=10)
    partial = tmp_path / "out.csv.partial"
    assert not out.exists() and partial.is_file()
    assert len(partial.read_text().splitlines()) == 1 + 30  # header, two checkpointed chunks and the unrecorded third
    assert json.loads((tmp_path / "out.csv.progress.json").read_text())["rows_done"] == 20
    monkeypatch.setattr(predict, "write_atomic", write)
    counts = run_predict(load_config(config, []), source, out, chunk_rows=10)
    assert same_predictions(out.read_bytes(), expected) and counts["rows"] == 300
    assert not partial.exists() and not (tmp_path / "out.csv.progress.json").exists()
    assert (tmp_path / "out.report.html").is_file()


def test_a_process_killed_with_sigkill_resumes_to_the_same_file(config, reference, tmp_path):
    source, expected = reference
    out, progress = tmp_path / "out.csv", tmp_path / "out.csv.progress.json"
    command = [sys.executable, "-m", "instructemo.cli", "predict", config, "--input", source, "--output", out]
    process = subprocess.Popen([*map(str, command), "--chunk-rows", "5"], stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and process.poll() is None:
        try:
            if json.loads(progress.read_text())["rows_done"] >= 50:
                break
        except (FileNotFoundError, json.JSONDecodeError):
            pass
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done = json.loads(progress.read_text())["rows_done"]
    assert 0 < done < 300 and not out.exists()
    resumed = subprocess.run([*map(str, command), "--chunk-rows", "7"], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"{done} of 300 rows were done" in resumed.stderr
    assert same_predictions(out.read_bytes(), expected)


def test_a_changed_input_is_not_resumed_into_an_old_partial_file(config, tmp_path, monkeypatch):
    source = write_table(tmp_path / "in.csv", 40)
    out = tmp_path / "out.csv"
    stopped_after_first_checkpoint(monkeypatch, config, source, out)
    write_table(source, 41)
    with pytest.raises(UserError, match=r"unfinished run of another job \(input_bytes.*delete out.csv.partial"):
        run_predict(load_config(config, []), source, out, chunk_rows=10)


def stopped_after_first_checkpoint(monkeypatch, config: str, source, out) -> None:
    """A predict interrupted (Ctrl-C) once its first chunk is written and checkpointed."""
    import instructemo.verbs.predict as predict

    write = predict.write_atomic

    def stop(path, text):
        write(path, text)
        if path.name.endswith(".progress.json"):
            raise KeyboardInterrupt

    monkeypatch.setattr(predict, "write_atomic", stop)
    with pytest.raises(KeyboardInterrupt):
        run_predict(load_config(config, []), source, out, chunk_rows=10)
    monkeypatch.setattr(predict, "write_atomic", write)


def test_a_run_retrained_in_place_or_recalibrated_is_not_resumed_into_the_old_models_file(
    tmp_path, tiny_llama, monkeypatch
):
    rows = [("i feel happy and scared", ["joy", "fear"]), ("so sad", ["sadness"]), ("ok", [])] * 2
    (tmp_path / "train.jsonl").write_text("".join(json.dumps({"text": t, "labels": l}) + "\n" for t, l in rows))
    config = tiny_config(
        tmp_path, tiny_llama, tmp_path, dataset=str(tmp_path / "train.jsonl"), max_steps=2, bf16=False, mode="score"
    )
    assert run_cli("sft", config) == 0
    source, out = write_table(tmp_path / "in.csv", 40), tmp_path / "out.csv"
    stopped_after_first_checkpoint(monkeypatch, config, source, out)
    assert run_cli("sft", config, "overwrite_output_dir=true", "seed=7") == 0  # the same paths, other weights
    with pytest.raises(UserError, match=r"unfinished run of another job \(weights differ\)"):
        run_predict(load_config(config, []), source, out, chunk_rows=10)
    with pytest.raises(UserError, match=r"\(weights, template, score_method differ\)"):
        run_predict(load_config(config, ["template=sentiment", "score_method=first_token"]), source, out)
    for leftover in ("out.csv.partial", "out.csv.progress.json"):
        (tmp_path / leftover).unlink()
    stopped_after_first_checkpoint(monkeypatch, config, source, out)
    names = json.loads((tmp_path / "run" / "label_space.json").read_text())["names"]
    (tmp_path / "run" / "thresholds.json").write_text(json.dumps({"thresholds": {n: 0.3 for n in names}}))
    with pytest.raises(UserError, match=r"\(thresholds differ\)"):
        run_predict(load_config(config, []), source, out, chunk_rows=10)


def test_shards_split_one_file_and_add_up_to_the_whole(config, reference, tmp_path):
    source, expected = reference
    body = []
    for i in range(3):
        out = tmp_path / f"part{i}.csv"
        assert run_cli("predict", config, "--input", source, "--output", out, "--shard", f"{i}/3") == 0
        lines = out.read_text().splitlines()
        assert len(lines) == 1 + 100
        body += lines[1:]
    header = expected.decode().splitlines()[0]
    assert same_predictions("\n".join([header, *body]).encode(), expected)


def test_a_shard_beyond_the_rows_is_a_valid_empty_part(config, tmp_path):
    source = write_table(tmp_path / "in.csv", 40)
    out = tmp_path / "part45.csv"
    assert run_cli("predict", config, "--input", source, "--output", out, "--shard", "45/50") == 0
    assert out.read_text().splitlines() == ["id,label,probability"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.csv", "part45.csv", "part45.report.html"]


@pytest.mark.parametrize("text", ["3/3", "1", "a/b", "-1/2", "0/0"])
def test_a_bad_shard_is_one_line(text):
    with pytest.raises(UserError, match="0 <= i < n"):
        parse_shard(text)


MEASURE = """
import resource, subprocess, sys
code = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024)
sys.exit(code)
"""


def peak_rss_mib(config, source, out, shard) -> int:
    command = ["instructemo.cli", "predict", config, "--input", source, "--output", out, "--shard", shard]
    result = subprocess.run(
        [sys.executable, "-c", MEASURE, sys.executable, "-m", *map(str, command)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    return int(result.stdout)


def test_a_million_row_file_streams_in_the_memory_of_a_small_one(config, tmp_path):
    """The same 1000 rows are labelled from a 2,000-row file and from the last shard of a 1,000,000-row file."""
    small = write_table(tmp_path / "small.csv", 2_000)
    big = write_table(tmp_path / "big.csv", 1_000_000)
    assert big.stat().st_size > 35_000_000
    small_peak = peak_rss_mib(config, small, tmp_path / "small-out.csv", "1/2")
    big_peak = peak_rss_mib(config, big, tmp_path / "big-out.csv", "999/1000")
    assert len((tmp_path / "big-out.csv").read_text().splitlines()) == 1 + 1000
    assert (tmp_path / "big-out.csv").read_text().splitlines()[1].startswith("r999000,")
    # Loaded whole, 1M rows as dicts would take several hundred MiB more.
    assert big_peak - small_peak < 40, (small_peak, big_peak)
