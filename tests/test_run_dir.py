"""The run directory's promises: never lose a user's file, never report a broken run as a good one."""

import json
from pathlib import Path

import pytest
import torch
from conftest import EMOTION_ROWS, build_tiny_causal_lm, pickled_copy, write_emotion_txt
from helpers.cli import run_cli, tiny_config
from safetensors.torch import load_file, save_file

from instructemo.cli import parse_arguments
from instructemo.errors import UserError
from instructemo.run.directory import INCOMPLETE, MANIFEST_FILE, RunDir
from instructemo.train import sft as train


@pytest.fixture()
def trained(tmp_path, tiny_llama, emotion_dir):
    """A finished run (3 steps) and its config."""
    config = tiny_config(tmp_path, tiny_llama, emotion_dir, max_steps=3)
    assert run_cli("sft", config) == 0
    return config, tmp_path / "run"


def strict_json(path: Path):
    def refuse(name):
        raise ValueError(f"{name} in {path}")

    return (
        [json.loads(line, parse_constant=refuse) for line in path.read_text().splitlines()]
        if path.suffix == ".jsonl"
        else json.loads(path.read_text(), parse_constant=refuse)
    )


# --- files a run did not write ---------------------------------------------------------------


def test_sft_never_writes_into_a_directory_it_did_not_make(tmp_path, tiny_llama, emotion_dir, capsys):
    mine = tmp_path / "run"
    mine.mkdir()
    files = {
        "README.md": "# my notes\n",
        "tokenizer_config.json": "{}",
        "loss.png": "not a png",
        "instructemo_config.yaml": "left by an old crashed run\n",
    }
    for name, text in files.items():
        (mine / name).write_text(text)
    config = tiny_config(tmp_path, tiny_llama, emotion_dir, max_steps=1)
    for extra in ([], ["overwrite_output_dir=true"], ["resume=auto"]):
        assert run_cli("sft", config, *extra) == 2
        err = capsys.readouterr().err.strip()
        assert (
            "holds files that instructemo did not write (README.md, instructemo_config.yaml" in err and "\n" not in err
        )
    assert {p.name: p.read_text() for p in mine.iterdir()} == files


@pytest.mark.slow
def test_overwrite_removes_only_what_the_run_wrote(tmp_path, tiny_llama, emotion_dir):
    parent = tmp_path / "saves"
    config = tiny_config(tmp_path, tiny_llama, emotion_dir, max_steps=2, save_steps=1, output_dir=str(parent / "run"))
    sibling = tiny_config(tmp_path / "b", tiny_llama, emotion_dir, max_steps=1, output_dir=str(parent / "other"))
    assert run_cli("sft", config) == 0 and run_cli("sft", sibling) == 0
    assert run_cli("generate-eval", config) == 0
    (parent / "notes.txt").write_text("mine")
    before = set(RunDir(parent / "run").manifest()["files"])
    assert {"checkpoint-1", "checkpoint-2", "eval"} <= set(RunDir(parent / "run").manifest()["dirs"])
    assert run_cli("sft", config, "overwrite_output_dir=true", "max_steps=1") == 0
    assert (parent / "notes.txt").read_text() == "mine" and RunDir(parent / "other").is_complete()
    run = parent / "run"
    assert not (run / "eval").exists() and not (run / "checkpoint-2").exists()  # the old run's, removed
    top = {name for name in before if "/" not in name}
    assert {name for name in RunDir(run).manifest()["files"] if "/" not in name} == top


def finished_run(root: Path) -> RunDir:
    """A run as sft leaves it, without training: a sealed checkpoint, an eval/ of its own, top-level files."""
    run = RunDir(root)
    run.begin("train")
    run.record(dirs=["checkpoint-4"])
    (root / "checkpoint-4" / "sub").mkdir(parents=True)
    (root / "checkpoint-4" / "adapter_model.safetensors").write_text("w")
    (root / "checkpoint-4" / "sub" / "state.json").write_text("{}")
    run.seal("checkpoint-4")
    run.record(dirs=["runs"])
    (root / "runs").mkdir()
    (root / "runs" / "events.out").write_text("e")
    run.publish(lambda staging: (staging / "adapter_config.json").write_text("{}"))
    evaluation = RunDir(root / "eval", "eval_output_dir")
    evaluation.begin("eval", replace=True)
    evaluation.publish(lambda staging: (staging / "metrics.json").write_text("{}"))
    run.record(dirs=["eval"])
    return run


@pytest.mark.parametrize(
    "where", ["checkpoint-4/my_notes.txt", "checkpoint-4/sub/my_notes.txt", "eval/my_notes.txt", "runs/my_notes.txt"]
)
def test_a_user_file_inside_a_run_folder_stops_the_overwrite_before_anything_is_removed(tmp_path, where):
    run = finished_run(tmp_path / "run")
    (tmp_path / "run" / where).write_text("mine")
    before = sorted(p.relative_to(tmp_path).as_posix() for p in (tmp_path / "run").rglob("*"))
    with pytest.raises(UserError, match=f"that instructemo did not write \\({where}\\)"):
        run.begin("train", replace=True)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in (tmp_path / "run").rglob("*")) == before
    assert run.is_complete() and RunDir(tmp_path / "run" / "eval").is_complete()


def test_overwrite_walks_the_listed_files_and_removes_a_folder_only_once_it_is_empty(tmp_path):
    run = finished_run(tmp_path / "run")
    assert {"checkpoint-4/adapter_model.safetensors", "checkpoint-4/sub/state.json", "runs/events.out"} <= set(
        run.manifest()["files"]
    )
    run.begin("train", replace=True)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [MANIFEST_FILE]


def test_a_folder_a_kill_left_half_written_is_the_runs_whole(tmp_path):
    run = RunDir(tmp_path / "run")
    run.begin("train")
    run.record(dirs=["checkpoint-2"])  # recorded before the Trainer writes it; killed before it was sealed
    (tmp_path / "run" / "checkpoint-2").mkdir()
    (tmp_path / "run" / "checkpoint-2" / "optimizer.pt").write_text("half")
    run.begin("train", replace=True)
    assert not (tmp_path / "run" / "checkpoint-2").exists()


def test_sft_overwrite_with_a_user_file_in_a_checkpoint_or_eval_changes_nothing(
    tmp_path, tiny_llama, emotion_dir, capsys
):
    config, run = tiny_config(tmp_path, tiny_llama, emotion_dir, max_steps=2, save_steps=2), tmp_path / "run"
    assert run_cli("sft", config) == 0 and run_cli("generate-eval", config) == 0
    checkpoint = next(run.glob("checkpoint-*"))
    capsys.readouterr()
    for where in (checkpoint / "my_notes.txt", run / "eval" / "my_notes.txt"):
        where.write_text("mine")
        manifest = (run / MANIFEST_FILE).read_text()
        assert run_cli("sft", config, "overwrite_output_dir=true", "do_eval=true") == 2
        err = capsys.readouterr().err.strip()
        assert f"did not write ({where.relative_to(run).as_posix()})" in err and "\n" not in err
        assert where.read_text() == "mine" and (run / MANIFEST_FILE).read_text() == manifest
        where.unlink()


def test_predict_never_overwrites_its_input(trained, tmp_path, capsys):
    config, _ = trained
    table = tmp_path / "texts.csv"
    table.write_text("id,text\n1,i am happy\n")
    assert run_cli("predict", config, "--input", table, "--output", table) == 2
    assert "would overwrite the input file" in capsys.readouterr().err
    assert table.read_text() == "id,text\n1,i am happy\n"
    assert run_cli("predict", config, "--input", table, "--output", tmp_path) == 2  # a directory


def test_predict_replaces_only_its_own_output_unless_told(trained, tmp_path, capsys):
    config, _ = trained
    table, mine = tmp_path / "texts.csv", tmp_path / "results.csv"
    table.write_text("id,text\n1,i am happy\n")
    mine.write_text("my own results, kept for months\n")
    assert run_cli("predict", config, "--input", table, "--output", mine) == 2
    assert "exists and is not an earlier predict's output" in capsys.readouterr().err
    assert mine.read_text() == "my own results, kept for months\n"
    assert run_cli("predict", config, "--input", table, "--output", mine, "--overwrite") == 0
    assert mine.read_text().startswith("id,label")
    assert run_cli("predict", config, "--input", table, "--output", mine) == 0  # its own output: run again freely


def test_export_to_a_file_is_one_line(trained, tmp_path, capsys):
    config, _ = trained
    target = tmp_path / "model.bin"
    target.write_text("mine")
    assert run_cli("export", config, "--output", target) == 2
    err = capsys.readouterr().err.strip()
    assert "is a file" in err and "\n" not in err and target.read_text() == "mine"


def test_every_json_file_a_run_writes_is_strict(trained):
    config, run = trained
    assert run_cli("generate-eval", config, "mode=score") == 0
    written = [
        *run.glob("*.json"),
        *run.glob("*.jsonl"),
        *(run / "eval").glob("*.json*"),
        *run.glob("checkpoint-*/*.json"),
    ]
    assert len(written) >= 8
    for path in written:
        strict_json(path)


# --- a run that did not finish ---------------------------------------------------------------


def mark_incomplete(run: Path) -> None:
    manifest = RunDir(run).manifest()
    manifest["state"] = INCOMPLETE
    (run / MANIFEST_FILE).write_text(json.dumps(manifest))


def test_every_reading_verb_refuses_an_incomplete_run(trained, tmp_path, capsys):
    config, run = trained
    assert run_cli("generate-eval", config) == 0
    mark_incomplete(run)
    table = tmp_path / "texts.csv"
    table.write_text("text\ni am happy\n")
    verbs = [
        ("generate-eval", config),
        ("classify", config, "--", "i am happy"),
        ("calibrate", config),
        ("predict", config, "--input", table, "--output", tmp_path / "out.csv"),
        ("export", config, "--output", tmp_path / "exported"),
        ("compare", run, "--output", tmp_path / "cmp"),
    ]
    for verb in verbs:
        capsys.readouterr()
        assert run_cli(*verb) == 2, verb[0]
        err = capsys.readouterr().err.strip()
        assert "holds an incomplete training run" in err and "\n" not in err, verb[0]
    assert not (tmp_path / "out.csv").exists() and not (tmp_path / "exported").exists()


# --- broken runs are failures ---------------------------------------------------------------


def corrupt_weights_at(monkeypatch, step: int, where: str = "weights") -> None:
    """Make training go non-finite at `step`, as an overflow would: NaN weights after the step, or a NaN gradient in it."""
    from transformers import TrainerCallback

    class Corrupt(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            if where == "weights" and state.global_step == step:
                with torch.no_grad():
                    next(p for p in model.parameters() if p.requires_grad).fill_(float("nan"))

        def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
            if where == "gradient" and state.global_step + 1 == step:
                next(p for p in model.parameters() if p.requires_grad).grad.fill_(float("inf"))

    build = train.build_sft_trainer

    def build_with_fault(*args, **kwargs):
        trainer = build(*args, **kwargs)
        trainer.add_callback(Corrupt())
        return trainer

    monkeypatch.setattr(train, "build_sft_trainer", build_with_fault)


@pytest.mark.parametrize(
    "where, step, what", [("weights", 5, "the loss is nan"), ("gradient", 6, "a gradient is not finite")]
)
def test_divergence_stops_training_and_keeps_the_last_good_checkpoint(
    tmp_path, tiny_llama, emotion_dir, capsys, monkeypatch, where, step, what
):
    corrupt_weights_at(monkeypatch, step, where)
    config = tiny_config(tmp_path, tiny_llama, emotion_dir, max_steps=10, save_steps=4, do_eval=True)
    assert run_cli("sft", config) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    shown = step + 1 if where == "weights" else step
    assert err == (
        f"instructemo: error: training diverged at step {shown} of 10: {what}; learning_rate 0.02 is likely "
        "too high (LoRA usually takes 1e-4 to 5e-4); the last good checkpoint, checkpoint-4, is kept, and "
        "nothing was saved as final"
    )
    run = tmp_path / "run"
    assert not (run / "adapter_model.safetensors").exists() and not (run / "eval").exists()
    assert [p.name for p in run.glob("checkpoint-*")] == ["checkpoint-4"]
    assert run_cli("generate-eval", config) == 2  # refused: incomplete


def test_a_model_that_is_broken_before_any_update_stops_at_step_one(tmp_path, emotion_dir, capsys):
    model = build_tiny_causal_lm(tmp_path / "broken")
    weights = load_file(model / "model.safetensors")
    name = next(n for n in weights if n.endswith("input_layernorm.weight"))
    weights[name] = torch.full_like(weights[name], float("nan"))
    save_file(weights, model / "model.safetensors", metadata={"format": "pt"})
    config = tiny_config(tmp_path, model, emotion_dir, max_steps=3)
    assert run_cli("sft", config) == 2
    assert "diverged at step 1 of 3: the loss is nan; no update had been made yet" in capsys.readouterr().err


def test_nan_weights_are_refused_by_every_inference_path(trained, tmp_path, capsys):
    config, run = trained
    weights = load_file(run / "adapter_model.safetensors")
    save_file({n: torch.full_like(t, float("nan")) for n, t in weights.items()}, run / "adapter_model.safetensors")
    table = tmp_path / "texts.csv"
    table.write_text("text\ni am happy\n")
    for verb in [
        ("generate-eval", config),
        ("generate-eval", config, "mode=score"),
        ("classify", config, "--", "hi"),
        ("predict", config, "--input", table, "--output", tmp_path / "out.csv"),
    ]:
        capsys.readouterr()
        assert run_cli(*verb) == 2
        assert "holds weights that are not numbers" in capsys.readouterr().err
    assert not (run / "eval").exists() and not (tmp_path / "out.csv").exists()


def test_a_damaged_or_missing_adapter_or_thresholds_file_is_one_line(trained, tmp_path, capsys):
    """A run whose files were cut short, deleted or hand-edited: every reading verb says which file, in one line."""
    config, run = trained
    weights = run / "adapter_model.safetensors"
    whole = weights.read_bytes()
    table = tmp_path / "texts.csv"
    table.write_text("text\ni am happy\n")
    verbs = [
        ("generate-eval", config),
        ("classify", config, "--", "hi"),
        ("export", config, "--output", tmp_path / "x"),
    ]
    for damage, message in (
        (lambda: weights.write_bytes(whole[: len(whole) // 2]), "adapter_model.safetensors is damaged"),
        (weights.unlink, "has an adapter_config.json but no adapter weights"),
        (
            lambda: (weights.write_bytes(whole), (run / "thresholds.json").write_text('{"thresholds": [0.5]}')),
            "thresholds.json is not a thresholds file",
        ),
    ):
        damage()
        for verb in verbs:
            capsys.readouterr()
            assert run_cli(*verb, "mode=score") == 2, verb
            err = capsys.readouterr().err.strip()
            assert message in err and "\n" not in err and "Traceback" not in err, (verb, err)
    assert not (run / "eval").exists() and not (tmp_path / "x").exists()


def test_compare_refuses_metrics_that_hold_nan(trained, tmp_path, capsys):
    config, run = trained
    assert run_cli("generate-eval", config) == 0
    metrics = run / "eval" / "metrics.json"
    metrics.write_text(metrics.read_text().replace('"accuracy": ', '"accuracy": NaN, "was": ', 1))
    assert run_cli("compare", run, "--output", tmp_path / "cmp") == 2
    assert "is not strict JSON" in capsys.readouterr().err


# --- resume ----------------------------------------------------------------------------------


def test_resume_refuses_a_run_with_other_settings_or_data(tmp_path, tiny_llama, capsys):
    data = tmp_path / "data"
    write_emotion_txt(data / "emotion" / "train.txt")
    config = tiny_config(tmp_path, tiny_llama, data, max_steps=4, save_steps=2)
    assert run_cli("sft", config) == 0
    mark_incomplete(tmp_path / "run")  # as if killed after its last checkpoint
    assert run_cli("sft", config, "resume=auto", "learning_rate=0.01") == 2
    err = capsys.readouterr().err
    assert "cannot resume from" in err and "settings.learning_rate 0.02 -> 0.01" in err
    write_emotion_txt(data / "emotion" / "train.txt", EMOTION_ROWS + [("i am thrilled", "joy")])
    assert run_cli("sft", config, "resume=auto") == 2
    assert "data.rows 12 -> 13" in capsys.readouterr().err
    write_emotion_txt(data / "emotion" / "train.txt")
    assert run_cli("sft", config, "resume=auto", "logging_steps=2") == 0  # a setting that changes nothing trained
    assert RunDir(tmp_path / "run").is_complete()
    assert run_cli("sft", config, "resume=auto") == 2  # finished: nothing to resume
    assert "finished; nothing to resume" in capsys.readouterr().err


# --- the command line -----------------------------------------------------------------------


def test_overrides_come_before_or_after_options():
    args = parse_arguments(["cv", "c.yaml", "seed=3", "--folds", "2", "max_steps=1"])
    assert args.folds == 2 and args.overrides == ["seed=3", "max_steps=1"]
    args = parse_arguments(["classify", "c.yaml", "--text", "one", "mode=score", "--", "seed=7", "two"])
    assert args.texts == ["one", "seed=7", "two"] and args.overrides == ["mode=score"]


def test_a_template_error_surfaces_before_the_model_loads(tmp_path, emotion_dir, capsys):
    evil = tmp_path / "evil.jinja"
    evil.write_text("{{ text.__class__.__mro__[1].__subclasses__() }}")
    not_a_model = tmp_path / "not-a-model"
    not_a_model.mkdir()
    (not_a_model / "config.json").write_text("{ not json")  # loading it would fail with another message
    config = tiny_config(tmp_path, not_a_model, emotion_dir, template=str(evil))
    for verb in ("sft", "generate-eval"):
        assert run_cli(verb, config) == 2
        assert "template refused by the sandbox" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@pytest.fixture()
def read_only_dir(tmp_path):
    """A directory this process cannot write to: a read-only mount when running as root (which ignores permissions)."""
    import os
    import subprocess

    target = tmp_path / "read-only"
    target.mkdir()
    if os.geteuid() != 0:
        target.chmod(0o555)
        yield target
        target.chmod(0o755)
        return
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(target)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot make a read-only directory here as root: mount failed ({mounted.stderr.decode().strip()})")
    yield target
    subprocess.run(["umount", str(target)], check=False)


def test_a_read_only_output_dir_is_one_line_before_anything_loads(
    tmp_path, tiny_llama, emotion_dir, read_only_dir, capsys
):
    config = tiny_config(tmp_path, tiny_llama, emotion_dir, max_steps=1, output_dir=str(read_only_dir / "run"))
    assert run_cli("sft", config) == 2
    err = capsys.readouterr().err.strip()
    assert "cannot write to output_dir" in err and "read-only" in err and "\n" not in err


def test_the_vllm_merge_honours_allow_pickle_weights(trained, tmp_path, tiny_llama, monkeypatch):
    """vLLM scores through a merged copy; building it must follow the config's pickle rule, not refuse a trusted base."""
    from instructemo.errors import UserError
    from instructemo.infer.vllm import merged_model

    _, run = trained
    pickled = pickled_copy(tiny_llama, tmp_path / "pickled")
    monkeypatch.setenv("INSTRUCTEMO_CACHE", str(tmp_path / "cache"))
    with pytest.raises(UserError, match="only pickled weights"):
        merged_model(str(pickled), run)
    assert (merged_model(str(pickled), run, allow_pickle=True) / "model.safetensors").is_file()


def test_jsonl_reads_back_texts_that_hold_unicode_line_separators(tmp_path):
    """predictions.jsonl keeps texts as they are: U+2028 or U+0085 inside one must not end its line (IMDB reviews hold them)."""
    from instructemo.run.fileio import jsonl_text, read_jsonl

    rows = [{"text": "one\u2028two\u0085three\u2029four"}, {"text": "five"}]
    path = tmp_path / "predictions.jsonl"
    path.write_text(jsonl_text(rows), encoding="utf-8")
    assert read_jsonl(path) == rows


def test_a_run_reads_the_data_it_recorded_from_any_folder_and_refuses_other_rows(
    tmp_path, tiny_llama, monkeypatch, capsys
):
    home, elsewhere = tmp_path / "home", tmp_path / "elsewhere"
    for folder, rows in ((home, EMOTION_ROWS), (elsewhere, EMOTION_ROWS[:3])):
        for name in ("train", "eval"):
            (folder / "data").mkdir(parents=True, exist_ok=True)
            (folder / "data" / f"{name}.csv").write_text("text,label\n" + "".join(f"{t},{l}\n" for t, l in rows))
    monkeypatch.chdir(home)  # relative paths, as users write them
    config = tiny_config(
        home, tiny_llama, home, dataset="data/train.csv", eval_dataset="data/eval.csv", max_steps=1, do_eval=True
    )
    assert run_cli("sft", config) == 0
    run = home / "run"
    assert json.loads((run / "eval" / "metrics.json").read_text())["metrics"]["n"] == len(EMOTION_ROWS)
    recorded = json.loads((run / "data_files.json").read_text())
    assert recorded["eval"]["file"] == str(home / "data" / "eval.csv") and recorded["eval"]["spec"] == "data/eval.csv"

    monkeypatch.chdir(elsewhere)  # another ./data/eval.csv here, with 3 rows
    assert run_cli("generate-eval", run) == 0  # the run's config names its files in full
    assert json.loads((run / "eval" / "metrics.json").read_text())["metrics"]["n"] == len(EMOTION_ROWS)
    evaluation = (run / "eval" / "metrics.json").read_text()
    capsys.readouterr()
    assert run_cli("generate-eval", config) == 2  # the YAML's relative path finds the other file here: refused
    err = capsys.readouterr().err.strip()
    assert f"evaluated on {home / 'data' / 'eval.csv'}" in err and str(elsewhere / "data" / "eval.csv") in err
    assert "\n" not in err

    (home / "data" / "eval.csv").write_text("text,label\ni am happy,joy\n")  # the recorded file, changed
    assert run_cli("generate-eval", run) == 2
    assert "but it has changed since (now sha256" in capsys.readouterr().err
    assert (run / "eval" / "metrics.json").read_text() == evaluation  # a refused evaluation changed nothing


def test_overwrite_removes_the_runs_a_run_made_inside_its_folders(tmp_path):
    """tune keeps its trials (runs of their own) in trials/: an overwrite of the search removes them too, and a user's
    file inside a trial stops it."""
    search = RunDir(tmp_path / "search")
    search.begin("tune")
    search.record(dirs=["trials"])
    trial = RunDir(tmp_path / "search" / "trials" / "trial-000")
    trial.begin("train")
    trial.publish(lambda staging: (staging / "adapter_config.json").write_text("{}"))
    search.publish(lambda staging: None)  # seals trials/
    (trial.path / "my_notes.txt").write_text("mine")
    with pytest.raises(UserError, match="did not write \\(trials/trial-000/my_notes.txt\\)"):
        search.begin("tune", replace=True)
    (trial.path / "my_notes.txt").unlink()
    search.begin("tune", replace=True)
    assert sorted(p.name for p in search.path.iterdir()) == [MANIFEST_FILE]


def test_a_run_saves_even_when_its_evaluation_file_does_not_exist_yet(tmp_path, tiny_llama, emotion_dir, monkeypatch):
    """The saved config names data paths in full; an eval_dataset made only after training must not fail the save."""
    import yaml

    monkeypatch.chdir(tmp_path)
    config = tiny_config(tmp_path, tiny_llama, emotion_dir, max_steps=1, eval_dataset="later/eval.csv")
    assert run_cli("sft", config) == 0 and RunDir(tmp_path / "run").is_complete()
    saved = yaml.safe_load((tmp_path / "run" / "instructemo_config.yaml").read_text())
    assert saved["eval_dataset"] == str(tmp_path / "later" / "eval.csv")
