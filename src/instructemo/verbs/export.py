"""`instructemo export`: a trained run as a standalone model directory that other servers load as it is.

--format hf (default): the base with the adapter merged in (safetensors), its
tokenizer, label space and thresholds. A `stage: head` run is already a
standard `*ForSequenceClassification` directory (`id2label`, `problem_type`):
transformers' text-classification pipeline and vLLM's classify load it.

--format vllm-classify: for a single-label `stage: sft` run, the same merged
causal LM with vLLM's label-token classifier in its config.json:
`classifier_from_token` (each label's first answer token), `method:
no_post_processing` and `id2label`. `vllm serve DIR --runner pooling --convert
classify` then answers /classify with a softmax over those tokens' logits at
the end of the prompt: instructemo's `score_method: first_token`. The
tokenizer's chat template is replaced by the run's own prompt, so a
`messages` request whose last user message is the text gets the prompt the
model was trained on. Labels whose answers start with the same token, and
multi-label runs, are refused (see `infer.first_answer_tokens`): one token
per label cannot represent them; a `stage: head` head can.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from instructemo.config.schema import Config, saved_stage
from instructemo.data.labels import LabelSpace
from instructemo.errors import UserError
from instructemo.infer import first_answer_tokens
from instructemo.infer.classifier import find_adapter, load_thresholds, trained_prompt
from instructemo.infer.loading import load_causal_run, load_head_run
from instructemo.models.load import resolve_model_path, save_atomically
from instructemo.prompts.builder import PromptBuilder
from instructemo.run.directory import (
    EXPORT_FILE,
    LABEL_SPACE_FILE,
    METRICS_FILE,
    MODEL_CONFIG_FILE,
    PROMPT_TEMPLATE_FILE,
    THRESHOLDS_FILE,
)
from instructemo.run.fileio import json_text, read_json

log = logging.getLogger(__name__)

FORMATS = ("hf", "vllm-classify")
TEXT_SLOT = "INSTRUCTEMO_TEXT_SLOT"  # stands for the text while the prompt around it is rendered


def export_model(cfg: Config, output: Path, gguf: bool = False, fmt: str = "hf") -> Path:
    """The trained run saved as a standalone HF directory (safetensors) in `fmt`."""
    if gguf:
        raise UserError(
            "--gguf: no well-kept GGUF converter ships with instructemo; export without --gguf, then run "
            "llama.cpp's convert_hf_to_gguf.py on the exported directory"
        )
    if fmt not in FORMATS:
        raise UserError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
    if cfg.few_shot and fmt == "vllm-classify":
        raise UserError(
            "--format vllm-classify bakes a zero-shot prompt into the chat template; few_shot examples do not "
            "fit in it: export with few_shot: 0"
        )
    adapter = find_adapter(cfg)
    if adapter is None:
        raise UserError(
            f"nothing to export: no trained adapter or model in {cfg.output_dir}; run instructemo sft first"
        )
    if output.exists() and not output.is_dir():
        raise UserError(f"--output {output} is a file; name a new directory for the exported model")
    if output.exists() and any(output.iterdir()):
        raise UserError(f"--output {output} is not empty; choose a new directory")
    base = resolve_model_path(cfg.model_name_or_path)
    stage = saved_stage(adapter, cfg.stage)
    prompt = trained_prompt(cfg, adapter)
    space = prompt.space
    load_thresholds(adapter, space)  # the export carries thresholds.json: a damaged one is refused, not shipped
    classifier_config = None
    # Saved from the CPU, in float32.
    options = dict(
        device=torch.device("cpu"),
        bf16=False,
        trust_remote_code=cfg.trust_remote_code,
        allow_pickle=cfg.allow_pickle_weights,
    )
    if stage == "head":
        model, tokenizer = load_head_run(base, adapter, space, flash_attn=cfg.flash_attn, **options)
    else:
        model, tokenizer = load_causal_run(base, adapter, flash_attn="eager", **options)
        if fmt == "vllm-classify":
            classifier_config = label_token_classifier(tokenizer, prompt.template, space, cfg.cutoff_len)

    # The export is float32 whatever dtype scored the run: a bfloat16 copy would lose precision for good and run
    # hundreds of times slower on CPUs without bf16. Loading it in the dtype that scored gives the same numbers.
    scored_in = evaluation_dtype(cfg)

    def write(staging: Path) -> None:
        model.save_pretrained(staging)  # safetensors
        tokenizer.save_pretrained(staging)
        for extra in (LABEL_SPACE_FILE, PROMPT_TEMPLATE_FILE, THRESHOLDS_FILE):
            if (adapter / extra).is_file():
                (staging / extra).write_text((adapter / extra).read_text())
        record = {
            "format": fmt,
            "stage": stage,
            "from_run": str(adapter),
            "base_model": cfg.model_name_or_path,
            "dtype": "float32",
            "scored_in": scored_in,
        }
        if classifier_config is not None:
            config_path = staging / MODEL_CONFIG_FILE
            config = json.loads(config_path.read_text())
            config.update(classifier_config)
            config_path.write_text(json_text(config))
            record.update(score_method="first_token", labels=list(space.names))
        (staging / EXPORT_FILE).write_text(json_text(record))

    if output.exists():
        output.rmdir()
    save_atomically(output, write)
    log.info("exported %s (%s, %s) to %s, weights in float32", adapter, stage, fmt, output)
    if scored_in == "bfloat16":
        log.info(
            "the run's evaluation scored in bfloat16 (bf16 on this host): load the export with dtype=torch.bfloat16 "
            "for the same probabilities, or evaluate with bf16: false for the float32 ones"
        )
    return output


def evaluation_dtype(cfg: Config) -> str | None:
    """The dtype the run's last generate-eval scored in (None: not evaluated, or before it was recorded)."""
    metrics = cfg.resolved_eval_output_dir / METRICS_FILE
    return read_json(metrics).get("dtype") if metrics.is_file() else None


def label_token_classifier(tokenizer, template, space: LabelSpace, cutoff_len: int) -> dict:
    """config.json keys that make vLLM read the causal LM as a classifier over each label's first answer token.

    Also replaces the tokenizer's chat template with the run's prompt around the last user message.
    """
    prompts = PromptBuilder(tokenizer, template, space, cutoff_len)
    conversation = prompts.messages(TEXT_SLOT)
    first = first_answer_tokens(tokenizer, conversation, space)
    tokens = tokenizer.convert_ids_to_tokens(first)
    if tokenizer.convert_tokens_to_ids(tokens) != first:
        raise UserError("the tokenizer does not map its label tokens back to the same ids; export --format hf instead")
    sample = "i feel fine today"
    expected = tokenizer.apply_chat_template(prompts.messages(sample), add_generation_prompt=True, tokenize=False)
    tokenizer.chat_template = classifier_chat_template(
        tokenizer.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
    )
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": sample}], tokenize=False)
    if rendered != expected:  # the template engine's whitespace rules changed the prompt: never serve a wrong one
        raise UserError("the run's prompt cannot be written as a chat template exactly; export --format hf instead")
    return {
        "id2label": dict(enumerate(space.names)),
        "label2id": {name: i for i, name in enumerate(space.names)},
        "problem_type": "single_label_classification",
        "classifier_from_token": tokens,
        "method": "no_post_processing",
    }


def classifier_chat_template(rendered: str) -> str:
    """A chat template that renders the run's whole prompt around the last user message's text.

    It always ends with the assistant's turn opening, the position the label tokens are read at, whether or not
    the client asks for a generation prompt (vLLM's classify does not by default).
    """
    if rendered.count(TEXT_SLOT) != 1:
        raise UserError("the prompt template does not show the text exactly once; export --format hf instead")
    before, after = rendered.split(TEXT_SLOT)
    if "{% endraw %}" in rendered:
        raise UserError("the prompt holds '{% endraw %}', which a chat template cannot quote; export --format hf")
    last_user = (
        "{%- set ns = namespace(text='') -%}"
        "{%- for message in messages -%}{%- if message['role'] == 'user' -%}"
        "{%- if message['content'] is string -%}{%- set ns.text = message['content'] -%}"
        "{%- else -%}{%- set ns.text = message['content'] | map(attribute='text') | join('') -%}{%- endif -%}"
        "{%- endif -%}{%- endfor %}"
    )
    return f"{last_user}{{% raw %}}{before}{{% endraw %}}{{{{ ns.text }}}}{{% raw %}}{after}{{% endraw %}}"
