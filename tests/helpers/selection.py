"""select_best as the tests drive it: the settings that score dev every two steps, and the check that the best
checkpoint's weights are the ones kept."""

from pathlib import Path

import pytest
import torch

# The selection's dev scores are compared with scores worked out here in float32 (and, in test_tune, with
# generate-eval's): a bf16 host would otherwise train and select in bfloat16 (bf16: auto).
SELECT = dict(
    bf16=False,
    select_best=True,
    select_steps=2,
    max_steps=6,
    save_steps=2,
    save_total_limit=3,
    per_device_train_batch_size=6,
    learning_rate=5e-2,
    logging_steps=1,
)


def assert_best_checkpoint_kept(run: Path, selection: dict, scores: dict[int, float]) -> None:
    """The selection's points are the dev scores worked out per checkpoint, and the saved weights are the best's."""
    from safetensors.torch import load_file

    for point in selection["history"]:
        assert point[selection["metric"]] == pytest.approx(scores[point["step"]])
    best = max(scores, key=lambda step: (scores[step], -step))  # the first of equal scores
    assert selection["best"]["step"] == best
    saved = load_file(run / "adapter_model.safetensors")
    at_best = load_file(run / f"checkpoint-{best}" / "adapter_model.safetensors")
    assert saved.keys() == at_best.keys()
    for name in saved:
        torch.testing.assert_close(saved[name], at_best[name], rtol=0, atol=0)
    last_step = max(scores)
    if best != last_step:  # and not the last weights
        last = load_file(run / f"checkpoint-{last_step}" / "adapter_model.safetensors")
        assert any(not torch.equal(saved[n], last[n]) for n in saved)
