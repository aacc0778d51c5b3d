"""Run in a subprocess by test_vllm.py: vLLM's own classify on an exported directory.

    python tests/vllm_classify_probe.py EXPORTED_DIR TEXTS.json [--plain]

Renders each text as a one-message chat with the exported tokenizer's chat template (the run's prompt), or
passes it as it is (--plain: a classification head), runs `LLM(..., runner="pooling", convert="classify")`
and prints a JSON list of each text's probabilities.
"""

import json
import os
import sys


def main() -> None:
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
    from transformers import AutoTokenizer
    from vllm import LLM

    directory, texts_file = sys.argv[1], sys.argv[2]
    texts = json.loads(open(texts_file).read())
    tokenizer = AutoTokenizer.from_pretrained(directory)
    if "--plain" in sys.argv:
        prompts = texts
    else:
        chats = [tokenizer.apply_chat_template([{"role": "user", "content": t}], tokenize=False) for t in texts]
        prompts = [{"prompt_token_ids": ids} for ids in tokenizer(chats, add_special_tokens=False)["input_ids"]]
    llm = LLM(
        model=directory,
        runner="pooling",
        convert="classify",
        dtype="float32",
        enforce_eager=True,
        max_model_len=256,
        kv_cache_memory_bytes=1 << 30,
        block_size=32,
    )
    print(json.dumps([output.outputs.probs for output in llm.classify(prompts, use_tqdm=False)]))


if __name__ == "__main__":
    main()
