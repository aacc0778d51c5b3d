"""instructemo audit: confident learning on out-of-fold probabilities finds flipped labels, and what it writes.

The data is invented so that a tiny encoder separates the classes: each text is
made of its class's words, so a flipped label is a wrong label by construction.
"""

import csv
import json
import random
from pathlib import Path

import pytest
from conftest import build_tiny_encoder
from helpers.cli import run_cli, tiny_config

CLASS_WORDS = {
    "joy": "sunny bright smile laugh cheer sparkle",
    "sadness": "tears grey lonely loss gloom ache",
    "anger": "rage shout fury slam bitter snarl",
}
FILLER = "the day was a and then it".split()
WORDS = " ".join([*CLASS_WORDS.values(), *FILLER])


def invented_rows(per_class: int, seed: int, multi_label: bool = False) -> list[tuple[str, list[str]]]:
    rng = random.Random(seed)
    rows = []
    for label, words in CLASS_WORDS.items():
        for _ in range(per_class):
            if multi_label and rng.random() < 0.3:  # a second emotion in some rows
                other = rng.choice([n for n in CLASS_WORDS if n != label])
                parts = rng.sample(words.split(), 3) + rng.sample(CLASS_WORDS[other].split(), 3)
                labels = sorted([label, other])
            else:
                parts, labels = rng.sample(words.split(), 4), [label]
            parts += rng.sample(FILLER, 2)
            rng.shuffle(parts)
            rows.append((" ".join(parts), labels))
    rng.shuffle(rows)
    return rows


def flip(rows, share: float, seed: int) -> tuple[list, set[int]]:
    """A copy of single-label rows with `share` of them given another label, and their 0-based indices."""
    rng = random.Random(seed)
    chosen = set(rng.sample(range(len(rows)), int(share * len(rows))))
    flipped = [
        (text, [rng.choice([n for n in CLASS_WORDS if n != labels[0]])] if i in chosen else labels)
        for i, (text, labels) in enumerate(rows)
    ]
    return flipped, chosen


def write_dataset(directory: Path, train, test, multi_label: bool = False, exclude: str | None = None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, rows in (("train", train), ("test", test)):
        with (directory / f"{name}.csv").open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["text", "label"])
            writer.writerows([(text, ",".join(labels)) for text, labels in rows])
    entry = {
        "format": "csv",
        "splits": {"train": "train.csv", "test": "test.csv"},
        "labels": {"names": list(CLASS_WORDS), "multi_label": multi_label},
        "template": "multi_label" if multi_label else "single_label",
    }
    if exclude:
        entry["exclude_ids"] = exclude
    (directory / "datasets.yaml").write_text(json.dumps({"toy": entry}))
    return directory


def audit_config(tmp_path, data_dir, **extra) -> str:
    encoder = build_tiny_encoder(tmp_path / "bert", "bert", hidden_size=32, extra_words=WORDS)
    values = dict(
        stage="head",
        finetuning_type="full",
        dataset="toy",
        eval_dataset="toy:test",
        num_train_epochs=6,
        learning_rate=3e-3,
        per_device_train_batch_size=16,
        logging_steps=50,
        seed=7,
        bf16=False,
    )
    values.update(extra)
    return tiny_config(tmp_path, encoder, data_dir, **values)


def read_issues(path: Path) -> list[dict]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def line_of(row: dict) -> int:
    """The 0-based data row of an issues.csv row of train.csv (line 1 is the header)."""
    return int(row["id"].removeprefix("line:")) - 2


def test_the_audit_finds_most_flipped_labels_and_few_others(tmp_path):
    clean = invented_rows(40, seed=1)
    noisy, flipped = flip(clean, 0.1, seed=2)
    data = write_dataset(tmp_path / "data", noisy, invented_rows(10, seed=3))
    config = audit_config(tmp_path, data)
    assert run_cli("audit", config, "--folds", 4, "--split", "all") == 0
    audit = tmp_path / "run" / "audit"
    issues = read_issues(audit / "issues.csv")
    found = {line_of(r) for r in issues if r["split"] == "train"}
    recall = len(found & flipped) / len(flipped)
    precision = len(found & flipped) / max(1, len(found))
    assert recall >= 0.7, (recall, precision, len(found))
    assert precision >= 0.6, (recall, precision, len(found))
    # Each flagged flip's suggestion is the label it had before the flip.
    by_line = {line_of(r): r for r in issues if r["split"] == "train"}
    assert all(by_line[i]["suggested"] == clean[i][1][0] for i in found & flipped)
    # Ranked: the least likely label first; the source names the file and line.
    confidences = [float(r["self_confidence"]) for r in issues]
    assert confidences == sorted(confidences) and [int(r["rank"]) for r in issues] == list(range(1, len(issues) + 1))
    assert issues[0]["source"].startswith(str((data / "train.csv").resolve()) + ":")
    summary = json.loads((audit / "summary.json").read_text())
    train = summary["splits"]["train"]
    assert train["rows"] == 120 and train["flagged"] == len(found)
    assert sum(c["flagged"] for c in train["per_class"].values()) == train["flagged"]
    noise = train["noise_matrix"]
    assert all(abs(sum(noise[g][t] for g in CLASS_WORDS) - 1) < 1e-6 for t in CLASS_WORDS)
    # The clean test split: few flags; it was scored by the fold models, which never trained on it.
    test = summary["splits"]["test"]
    assert test["rows"] == 30 and test["flagged"] <= 2 and "none trained on these rows" in test["probabilities"]
    page = (audit / "audit.html").read_text()
    assert "Estimated noise matrix" in page and issues[0]["text"] in page
    # The cross-validation folder is the cv verb's own, and a second audit reuses it rather than training again.
    assert (tmp_path / "run" / "cv" / "summary.json").is_file()
    assert run_cli("audit", config, "--folds", 4, "overwrite_output_dir=false") == 2  # the audit folder is taken
    (audit / "instructemo_run.json").unlink()
    for name in ("issues.csv", "summary.json", "audit.html"):
        (audit / name).unlink()
    mtime = (tmp_path / "run" / "cv" / "fold-1" / "model.safetensors").stat().st_mtime
    assert run_cli("audit", config, "--folds", 4) == 0
    assert (tmp_path / "run" / "cv" / "fold-1" / "model.safetensors").stat().st_mtime == mtime
    assert json.loads((audit / "summary.json").read_text())["audit"]["cv_reused"] is True


@pytest.mark.slow
def test_a_clean_dataset_flags_few_rows(tmp_path):
    data = write_dataset(tmp_path / "data", invented_rows(40, seed=4), invented_rows(5, seed=5))
    assert run_cli("audit", audit_config(tmp_path, data), "--folds", 4) == 0
    summary = json.loads((tmp_path / "run" / "audit" / "summary.json").read_text())
    assert summary["splits"]["train"]["flagged"] <= 3
    assert summary["splits"]["train"]["held_out_accuracy"] >= 0.9


@pytest.mark.slow
def test_multi_label_audit_flags_a_missing_and_an_added_label(tmp_path):
    rows = invented_rows(40, seed=6, multi_label=True)
    doubles = [i for i, (_, labels) in enumerate(rows) if len(labels) == 2]
    singles = [i for i, (_, labels) in enumerate(rows) if len(labels) == 1]
    noisy = list(rows)
    dropped, added = doubles[:6], singles[:6]
    for i in dropped:  # a label left off
        noisy[i] = (rows[i][0], rows[i][1][:1])
    for i in added:  # a label that is not there
        extra = next(n for n in CLASS_WORDS if n not in rows[i][1])
        noisy[i] = (rows[i][0], sorted([*rows[i][1], extra]))
    data = write_dataset(tmp_path / "data", noisy, invented_rows(5, seed=7, multi_label=True), multi_label=True)
    config = audit_config(tmp_path, data, num_train_epochs=10)
    assert run_cli("audit", config, "--folds", 4, "--write-clean", tmp_path / "clean.jsonl", "--relabel") == 0
    issues = read_issues(tmp_path / "run" / "audit" / "issues.csv")
    found = {line_of(r) for r in issues}
    wrong = set(dropped) | set(added)
    assert len(found & wrong) / len(wrong) >= 0.7, (sorted(found & wrong), len(found))
    summary = json.loads((tmp_path / "run" / "audit" / "summary.json").read_text())
    per_label = summary["splits"]["train"]["per_label_issue_probability"]
    assert set(per_label) == set(CLASS_WORDS)
    # --relabel: every row kept, the flagged ones with the suggested label set.
    cleaned = [json.loads(line) for line in (tmp_path / "clean.jsonl").read_text().splitlines()]
    assert len(cleaned) == len(rows)
    fixed = [i for i in found & wrong]
    assert sum(sorted(cleaned[i]["label"]) == rows[i][1] for i in fixed) >= 0.7 * len(fixed)


@pytest.mark.slow
def test_the_exclusion_list_round_trips_through_the_registry(tmp_path):
    noisy, _ = flip(invented_rows(40, seed=8), 0.1, seed=9)
    test_rows, _ = flip(invented_rows(10, seed=10), 0.1, seed=11)  # three wrong test labels
    data = write_dataset(tmp_path / "data", noisy, test_rows)
    config = audit_config(tmp_path, data)
    clean_csv = tmp_path / "clean.csv"
    assert run_cli("audit", config, "--folds", 4, "--split", "all", "--write-clean", clean_csv) == 0
    issues_path = tmp_path / "run" / "audit" / "issues.csv"
    issues = read_issues(issues_path)
    flagged_train = {r["id"] for r in issues if r["split"] == "train"}
    flagged_test = [r for r in issues if r["split"] == "test"]
    with clean_csv.open(newline="") as handle:
        assert len(list(csv.DictReader(handle))) == 120 - len(flagged_train)
    # A reviewer keeps the list but disagrees with its first row; the registry names the reviewed list.
    reviewed = data / "reviewed.csv"
    kept = [r for r in issues if r["split"] == "train"][1:]
    with reviewed.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(issues[0]))
        writer.writeheader()
        writer.writerows(kept)
    write_dataset(data, noisy, test_rows, exclude="reviewed.csv")
    from instructemo.config.schema import load_config
    from instructemo.data.datasets import load_run_split

    cfg = load_config(config, [f"dataset_dir={data}"])
    train = load_run_split(cfg, "train")
    assert len(train.records) == 120 - len(kept)
    assert f"less {len(kept)} rows listed in {reviewed.resolve()}" in train.origin
    # The test split has no listed rows: nothing is left out of it.
    assert len(load_run_split(cfg, "eval").records) == 30
    # A run trained on the cleaned data records the list; changing the list afterwards is refused.
    run2 = tmp_path / "run2"
    assert run_cli("sft", config, f"output_dir={run2}", "num_train_epochs=1") == 0
    recorded = json.loads((run2 / "data_files.json").read_text())["train"]["exclude_ids"]
    assert recorded["file"] == str(reviewed.resolve())
    # generate-eval reports the unflagged figure beside the full one, never in its place.
    assert flagged_test
    assert run_cli("generate-eval", config, f"output_dir={run2}", "--unflagged", tmp_path / "run" / "audit") == 0
    metrics = json.loads((run2 / "eval" / "metrics.json").read_text())["metrics"]
    assert metrics["n"] == 30 and metrics["unflagged"]["rows"] == 30 - len(flagged_test)
    assert "Unflagged rows only" in (run2 / "eval" / "report.md").read_text()
    assert "Unflagged rows only" in (run2 / "eval" / "report.html").read_text()
    # An audit of other rows cannot stand for this split's flags: one changed row, and it is refused.
    other = tmp_path / "other_test.csv"
    other.write_text((data / "test.csv").read_text().replace("the", "a", 1))
    args = [
        "generate-eval",
        config,
        f"output_dir={run2}",
        f"eval_dataset={other}",
        "--unflagged",
        tmp_path / "run" / "audit",
    ]
    assert run_cli(*args) == 2
    with reviewed.open("a", newline="") as handle:
        handle.write("")
    reviewed.write_text(reviewed.read_text().replace(kept[0]["text"], "the day was sunny and then it"))
    with pytest.raises(Exception, match="another version of the file"):
        load_run_split(cfg, "train")


@pytest.mark.parametrize(
    "content, message",
    [
        ("id,text\nline:2,x\n", "no split column"),
        ("id,split\nline:999,train\n", "names 1 row\\(s\\) that .* does not have"),
    ],
)
def test_a_bad_exclusion_list_is_one_line(tmp_path, content, message):
    from instructemo.data.datasets import load_split

    data = write_dataset(tmp_path / "data", invented_rows(3, seed=1), invented_rows(1, seed=2), exclude="x.csv")
    (data / "x.csv").write_text(content)
    with pytest.raises(Exception, match=message):
        load_split("toy:train", data)


def test_the_audit_refuses_before_training_what_it_cannot_write(tmp_path, capsys):
    data = write_dataset(tmp_path / "data", invented_rows(10, seed=1), invented_rows(2, seed=2))
    config = audit_config(tmp_path, data)
    mine = tmp_path / "mine.csv"
    mine.write_text("a user's file\n")
    assert run_cli("audit", config, "--folds", 2, "--write-clean", mine) == 2
    assert "already exists" in capsys.readouterr().err and mine.read_text() == "a user's file\n"
    assert run_cli("audit", config, "--folds", 2, "--relabel") == 2
    assert run_cli("audit", config, "--folds", 2, "stage=sft") == 2
    assert "add mode=score" in capsys.readouterr().err
    assert run_cli("audit", config, "--folds", 1) == 2
    assert "at least 2 folds" in capsys.readouterr().err
    assert run_cli("cv", config, "--folds", 1) == 2
    assert not (tmp_path / "run").exists()  # nothing written by any refusal so far
    (tmp_path / "run" / "audit").mkdir(parents=True)
    (tmp_path / "run" / "audit" / "notes.txt").write_text("mine")
    assert run_cli("audit", config, "--folds", 2) == 2
    assert "did not write" in capsys.readouterr().err
    assert not (tmp_path / "run" / "cv").exists()  # refused before any fold trained
    assert (tmp_path / "run" / "audit" / "notes.txt").read_text() == "mine"
