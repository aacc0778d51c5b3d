"""`instructemo generate-eval`: generate answers, parse them into labels, score and report."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from .config import Config
from .data import default_eval_spec, load_split, resolve_label_space
from .errors import UserError
from .infer.hf import generate, load_for_inference
from .labels import LABEL_SPACE_FILE, LabelSpace
from .metrics import score
from .models import resolve_model_path, use_bf16
from .parse import parse_labels
from .prompts import PromptBuilder, load_template
from .report import write_eval_outputs

log = logging.getLogger(__name__)


def find_adapter(cfg: Config) -> Path | None:
    """The trained adapter or model to evaluate, or None for the base model alone (zero-shot)."""
    if cfg.adapter_name_or_path:
        path = Path(cfg.adapter_name_or_path)
        if not path.is_dir():
            raise UserError(f"adapter_name_or_path {path} not found; point it at a training output_dir")
        return path
    output_dir = Path(cfg.output_dir)
    if (output_dir / "adapter_config.json").is_file() or (output_dir / "config.json").is_file():
        return output_dir
    return None


def trained_label_space(cfg: Config, adapter: Path | None) -> tuple[LabelSpace, str]:
    """The label space the model was trained on, else the training dataset's."""
    space, template = resolve_label_space(cfg.dataset, cfg.dataset_dir, cfg.text_column, cfg.label_column)
    if adapter is not None and (adapter / LABEL_SPACE_FILE).is_file():
        space = LabelSpace.from_dict(json.loads((adapter / LABEL_SPACE_FILE).read_text()), str(adapter / LABEL_SPACE_FILE))
    return space, template


def run_generate_eval(cfg: Config) -> dict:
    """Evaluate on cfg.eval_dataset and write predictions, metrics and a report; return the metrics."""
    adapter = find_adapter(cfg)
    space, default_template = trained_label_space(cfg, adapter)
    eval_spec = cfg.eval_dataset or default_eval_spec(cfg.dataset, cfg.dataset_dir, cfg.text_column, cfg.label_column)
    split = load_split(
        eval_spec, cfg.dataset_dir, default_split="test", label_space=space, max_samples=cfg.max_eval_samples,
        text_column=cfg.text_column, label_column=cfg.label_column,
    )
    template = load_template(cfg.template, default_template)
    bf16 = use_bf16(cfg.bf16)
    base_path = resolve_model_path(cfg.model_name_or_path)
    if adapter is None:
        log.warning("no trained adapter in %s: evaluating the base model zero-shot", cfg.output_dir)
    model, tokenizer = load_for_inference(base_path, adapter, flash_attn=cfg.flash_attn, bf16=bf16)
    builder = PromptBuilder(tokenizer, template, space, cfg.cutoff_len)
    conversations = [builder.prompt(r.text) for r in split.records]

    started = time.perf_counter()
    answers = generate(
        model, tokenizer, conversations, batch_size=cfg.per_device_eval_batch_size, max_new_tokens=cfg.max_new_tokens,
        do_sample=cfg.do_sample, temperature=cfg.temperature, top_p=cfg.top_p, seed=cfg.seed,
    )
    seconds = time.perf_counter() - started
    predicted = [parse_labels(a, space) for a in answers]
    metrics = score([r.labels for r in split.records], predicted, space)
    rows = [
        {"id": r.id, "source": r.source, "text": r.text, "gold": list(r.labels), "generation": a,
         "predicted": list(p) if p is not None else None}
        for r, a, p in zip(split.records, answers, predicted)
    ]
    context = {
        "model": cfg.model_name_or_path,
        "adapter": str(adapter) if adapter else None,
        "eval_dataset": eval_spec,
        "data_origin": split.origin,
        "decoding": "sampling" if cfg.do_sample else "greedy",
        "generation_seconds": round(seconds, 1),
        "examples_per_second": round(len(rows) / seconds, 2),
    }
    out_dir = cfg.resolved_eval_output_dir
    write_eval_outputs(out_dir, rows, metrics, context)
    headline = "jaccard" if space.multi_label else "accuracy"
    log.info(
        "%s %.4f, macro-F1 %.4f, invalid %.2f%% on %d rows; wrote %s",
        headline, metrics[headline], metrics["macro_f1"], 100 * metrics["invalid_rate"], metrics["n"], out_dir,
    )
    return metrics
