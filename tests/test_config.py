import pytest

from instructemo.cli import main
from instructemo.config.schema import FIELDS, Config, load_config, make_config
from instructemo.errors import UserError


def write(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_defaults_and_overrides(tmp_path):
    cfg = load_config(
        write(tmp_path, "dataset: emotion\nlora_rank: 4\nwarmup_steps: 5\n"), ["learning_rate=2e-4", "do_eval=true"]
    )
    assert cfg.lora_rank == 4
    assert cfg.learning_rate == pytest.approx(2e-4)
    assert cfg.do_eval is True
    assert cfg.resolved_lora_alpha == 8.0
    assert cfg.resolved_eval_output_dir.as_posix().endswith("saves/run/eval")


def test_every_llamafactory_key_exists():
    keys = (
        "model_name_or_path template dataset eval_dataset dataset_dir max_samples finetuning_type lora_rank "
        "lora_alpha lora_dropout lora_target cutoff_len per_device_train_batch_size gradient_accumulation_steps "
        "learning_rate num_train_epochs lr_scheduler_type warmup_steps bf16 flash_attn output_dir seed report_to do_eval"
    ).split()
    assert set(keys) <= set(FIELDS)


@pytest.mark.parametrize(
    "values, message",
    [
        ({"lora_rnk": 8}, "unknown config key 'lora_rnk'; did you mean 'lora_rank'?"),
        ({"lora_rank": "eight"}, "'lora_rank' must be int"),
        ({"lora_rank": True}, "'lora_rank' must be int"),
        ({"lora_rank": 0}, "'lora_rank' must be at least 1"),
        ({"learning_rate": -1.0}, "'learning_rate' must be at least 0"),
        ({"finetuning_type": "qlora-ish"}, "'finetuning_type' must be one of lora, qlora, ia3, full"),
        ({"flash_attn": "fa3"}, "'flash_attn' must be one of auto, fa2, sdpa, eager"),
        ({"bf16": "yes"}, "'bf16' must be one of auto or true/false"),
        ({"cutoff_len": 4}, "'cutoff_len' must be at least 16"),
        ({"dataset": None}, "'dataset' needs a value"),
        ({"lora_dropout": 1.5}, "'lora_dropout' must be below 1"),
    ],
)
def test_bad_values_are_named(values, message):
    with pytest.raises(UserError) as info:
        make_config(values)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_int_accepted_for_float_and_float_for_int():
    cfg = make_config({"num_train_epochs": 2, "lora_rank": 8.0})
    assert cfg.num_train_epochs == 2.0 and isinstance(cfg.lora_rank, int)
    assert make_config({"bf16": False}).bf16 is False


def test_malformed_yaml_names_the_line(tmp_path):
    with pytest.raises(UserError, match=r"not valid YAML at line 2"):
        load_config(write(tmp_path, "dataset: emotion\nlora_rank: 8: 9\n"))


def test_yaml_must_be_a_mapping(tmp_path):
    with pytest.raises(UserError, match="must be a mapping"):
        load_config(write(tmp_path, "- a\n- b\n"))


def test_missing_config_file(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def test_override_needs_equals(tmp_path):
    with pytest.raises(UserError, match="is not key=value"):
        load_config(write(tmp_path, ""), ["lora_rank"])


def test_help_lists_every_key_with_default(capsys):
    with pytest.raises(SystemExit):
        main(["sft", "--help"])
    out = capsys.readouterr().out
    for name in FIELDS:
        assert name in out
    assert "[default: 512]" in out  # cutoff_len


def test_cli_reports_user_errors_in_one_line(tmp_path, capsys):
    code = main(["sft", str(write(tmp_path, "lerning_rate: 1e-4\n"))])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err == "instructemo: error: unknown config key 'lerning_rate'; did you mean 'learning_rate'?"


def test_config_round_trips():
    cfg = Config()
    assert make_config(cfg.to_dict()) == cfg


def test_every_key_is_declared_once_in_one_group_and_the_key_lists_come_from_the_declarations():
    """The six hand-kept key lists are gone: each list is read off the keys' own metadata."""
    import dataclasses

    from instructemo.config.groups import ModelKeys
    from instructemo.config.schema import (
        DERIVED_TRAINING_ARGS,
        FIELDS,
        FIXED_KEYS,
        RESUME_NEUTRAL_KEYS,
        WEBUI_KEYS,
        keys_by_group,
    )

    groups = keys_by_group()
    assert list(groups) == ["model", "data", "finetuning", "inference", "tune"]
    assert [k for keys in groups.values() for k in keys] == list(FIELDS)  # each key once, in one group
    assert [f.name for f in dataclasses.fields(ModelKeys)] == groups["model"]
    assert {"output_dir", "mode", "device", "max_new_tokens"} <= RESUME_NEUTRAL_KEYS
    assert "learning_rate" not in RESUME_NEUTRAL_KEYS and "learning_rate" not in FIXED_KEYS
    assert {"dataset", "seed", "output_dir", "tune"} <= FIXED_KEYS
    assert set(WEBUI_KEYS) == {n for n, f in FIELDS.items() if f.metadata["webui"]} and "learning_rate" in WEBUI_KEYS
    assert DERIVED_TRAINING_ARGS["max_length"] == "cutoff_len" and DERIVED_TRAINING_ARGS["fp16"] == "bf16"
