"""The `instructemo` command: verbs only. Each parses its arguments and calls one function."""

from __future__ import annotations

import argparse
import logging
import os
import re
import signal
import sys
import threading
import traceback
from typing import Callable, NamedTuple

from instructemo.config.schema import describe_keys, load_config
from instructemo.errors import UserError


def _sft(cfg, args=None):
    import dataclasses

    from instructemo.train.launch import inside_launcher, leave_process_group, relaunch

    if args is not None and args.nproc:
        cfg = dataclasses.replace(cfg, nproc_per_node=args.nproc)
    # DeepSpeed sets up its process group from torchrun's variables (else it looks for MPI): even one process runs under it.
    if (cfg.nproc_per_node > 1 or (cfg.deepspeed and args is not None)) and not inside_launcher():
        from instructemo.models.load import resolve_model_path
        from instructemo.train.preflight import check_before_training, start_run

        plan = check_before_training(cfg)  # config and data errors surface once, before any worker starts
        start_run(cfg, plan.fingerprint)
        resolve_model_path(cfg.model_name_or_path)  # materialise an alias once, not once per worker
        overrides = [o for o in args.overrides if not o.startswith("nproc_per_node=")]
        relaunch(cfg.nproc_per_node, args.config, overrides, cfg.output_dir)
    else:
        from instructemo.train.sft import run_sft

        run_sft(cfg)
        if inside_launcher():
            leave_process_group()
    if cfg.do_eval and not inside_launcher():
        _generate_eval(cfg)


def _generate_eval(cfg, args=None):
    from pathlib import Path

    from instructemo.evaluate.generate import run_generate_eval

    unflagged = getattr(args, "unflagged", None)
    run_generate_eval(cfg, unflagged=Path(unflagged) if unflagged else None)


def _calibrate(cfg, args=None):
    from instructemo.evaluate.calibrate import run_calibrate

    run_calibrate(cfg)


def _cv(cfg, args):
    from instructemo.verbs.cv import run_cv

    run_cv(cfg, args.folds)


def _audit(cfg, args):
    from instructemo.verbs.audit import run_audit

    run_audit(cfg, args.folds, args.split, args.write_clean, args.relabel)


def _tune(cfg, args):
    try:
        import optuna  # noqa: F401
    except ModuleNotFoundError:
        raise UserError("instructemo tune needs optuna: pip install 'instructemo[tune]'") from None
    from instructemo.tune.study import run_tune

    run_tune(cfg, args.trials)


def _classify(cfg, args):
    from instructemo.verbs.tools import classify_texts, print_classified, stdin_texts, utf8_texts

    texts = utf8_texts(args.texts) if args.texts else stdin_texts(sys.stdin)
    print_classified(classify_texts(cfg, texts))


def _export(cfg, args):
    from pathlib import Path

    from instructemo.verbs.export import export_model

    print(export_model(cfg, Path(args.output), gguf=args.gguf, fmt=args.format))


def _datasets(args):
    from instructemo.verbs.tools import list_datasets, print_datasets

    print_datasets(list_datasets(args.dataset_dir))


def _compare(args):
    from pathlib import Path

    from instructemo.verbs.compare import compare_runs

    compare_runs([Path(p) for p in args.runs], Path(args.output))


def _ensemble(args):
    from pathlib import Path

    from instructemo.verbs.ensemble import run_ensemble

    weights = None
    if args.weights:
        try:
            weights = [float(w) for w in args.weights.split(",")]
        except ValueError:
            raise UserError(f"--weights {args.weights!r}: give numbers separated by commas, e.g. 2,1") from None
    run_ensemble([Path(p) for p in args.runs], Path(args.output), weights)


def _webui(args):
    try:
        import gradio  # noqa: F401
    except ModuleNotFoundError:
        raise UserError("instructemo webui needs gradio: pip install 'instructemo[webui]'") from None
    from instructemo.webui.app import run_webui

    auth = args.auth if args.auth is not None else os.environ.get("INSTRUCTEMO_WEBUI_AUTH")
    run_webui(args.host, args.port, args.workdir, args.dataset_dir, args.max_upload_mb, auth, args.insecure_no_auth)


def _predict(cfg, args):
    from pathlib import Path

    from instructemo.verbs.predict import parse_shard, run_predict

    run_predict(
        cfg,
        Path(args.input),
        Path(args.output),
        text_column=args.text_column,
        id_column=args.id_column,
        shard=parse_shard(args.shard),
        chunk_rows=args.chunk_rows,
        overwrite=args.overwrite,
    )


def _serve(cfg, args):
    from pathlib import Path

    try:
        from instructemo.serve.server import run_serve
        from instructemo.serve.settings import ServeSettings
    except ModuleNotFoundError as exc:
        if exc.name not in ("fastapi", "starlette", "uvicorn", "prometheus_client"):
            raise
        raise UserError(f"instructemo serve needs {exc.name}: pip install 'instructemo[serve]'") from None

    name = args.served_model_name or Path(cfg.adapter_name_or_path or cfg.output_dir).name
    run_serve(
        cfg,
        ServeSettings(
            host=args.host,
            port=args.port,
            api_key=args.api_key,
            max_batch_size=args.max_batch_size,
            max_wait_ms=args.max_wait_ms,
            max_body_bytes=args.max_body_bytes,
            max_texts=args.max_texts,
            served_model_name=name,
        ),
    )


class Verb(NamedTuple):
    run: Callable  # run(cfg, args) when the verb reads a config, else run(args)
    summary: str
    reads_config: bool = True  # its first argument is CONFIG.yaml (or a run's folder), then key=value overrides


# Every verb, once: the parser's sub-commands and the dispatch in main() both come from this table.
VERBS = {
    "sft": Verb(_sft, "Fine-tune a model on a dataset (trl SFTTrainer + peft)."),
    "generate-eval": Verb(
        _generate_eval, "Classify the evaluation split, score it against the gold labels and report."
    ),
    "calibrate": Verb(_calibrate, "Choose per-label thresholds for multi-label score mode on the dev split."),
    "cv": Verb(_cv, "K-fold cross-validation: train and evaluate once per fold, report mean and std of every metric."),
    "audit": Verb(
        _audit,
        "Find rows whose labels look wrong: out-of-fold probabilities (cv) and confident learning (cleanlab); "
        "writes issues.csv, summary.json and audit.html.",
    ),
    "tune": Verb(
        _tune, "Search hyperparameters with Optuna (the config's tune: section) on the dev split; writes best.yaml."
    ),
    "classify": Verb(
        _classify, "Classify texts given as arguments (or one per line on stdin) and print labels with probabilities."
    ),
    "export": Verb(
        _export,
        "Save the run as a standalone model directory: merged (hf), or a classifier vLLM serves (vllm-classify).",
    ),
    "predict": Verb(_predict, "Classify an unlabelled CSV / TSV / JSONL file into a submission-style file."),
    "serve": Verb(_serve, "Serve the trained classifier over HTTP: vLLM's /v1/classify, OpenAI's chat, /metrics."),
    "datasets": Verb(
        _datasets, "List the dataset registry: splits, sizes, labels, where each loads from.", reads_config=False
    ),
    "compare": Verb(
        _compare,
        "Runs side by side: a table of metrics, cost and per-class F1, and a bar chart.",
        reads_config=False,
    ),
    "ensemble": Verb(
        _ensemble,
        "Combine evaluated runs into one classifier on the same rows: averaged probabilities (single-label) "
        "or a vote (multi-label); writes predictions, metrics and a report.",
        reads_config=False,
    ),
    "webui": Verb(
        _webui,
        "Train, evaluate, try and compare classifiers from the browser (Gradio), without YAML.",
        reads_config=False,
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="instructemo", description="Instruction-tune language models to classify emotion and sentiment."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="Show library logs and warnings.")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    listing = verbs.add_parser("datasets", help=VERBS["datasets"].summary)
    listing.add_argument("--dataset-dir", default="data", help="Folder with an extra datasets.yaml (default: data).")
    listing.add_argument("-v", "--verbose", action="store_true", help="Show library logs and warnings.")
    compare = verbs.add_parser("compare", help=VERBS["compare"].summary)
    compare.add_argument(
        "runs",
        nargs="+",
        metavar="RUN_DIR",
        help="A training output_dir (with eval/ in it) or an evaluation directory.",
    )
    compare.add_argument(
        "--output", default="compare", help="Folder for compare.md, compare.json, per_class_f1.png (default: compare)."
    )
    compare.add_argument("-v", "--verbose", action="store_true", help="Show library logs and warnings.")
    ensemble = verbs.add_parser("ensemble", help=VERBS["ensemble"].summary)
    ensemble.add_argument(
        "runs", nargs="+", metavar="RUN_DIR", help="Two or more runs (with eval/ in them) or evaluation directories."
    )
    ensemble.add_argument("--output", required=True, help="Folder for the ensemble's evaluation.")
    ensemble.add_argument(
        "--weights", help="One positive weight per run, in order, e.g. 2,1 (default: equal). Choose them on dev."
    )
    ensemble.add_argument("-v", "--verbose", action="store_true", help="Show library logs and warnings.")
    webui = verbs.add_parser("webui", help=VERBS["webui"].summary)
    webui.add_argument(
        "--host", default="127.0.0.1", help="Address to listen on (default 127.0.0.1: this machine only)."
    )
    webui.add_argument("--port", type=int, default=7860, help="Port (default 7860).")
    webui.add_argument("--workdir", default="saves/webui", help="Folder for uploads, configs, runs and jobs' logs.")
    webui.add_argument("--dataset-dir", default="data", help="Folder with an extra datasets.yaml (default: data).")
    webui.add_argument("--max-upload-mb", type=int, default=200, help="Largest file the page accepts (default 200 MB).")
    webui.add_argument(
        "--auth",
        metavar="USER:PASSWORD",
        help="Ask for this login (or set INSTRUCTEMO_WEBUI_AUTH); needed beyond 127.0.0.1.",
    )
    webui.add_argument(
        "--insecure-no-auth",
        action="store_true",
        help="Listen beyond 127.0.0.1 without a login: anyone who reaches the page can train and run models.",
    )
    webui.add_argument("-v", "--verbose", action="store_true", help="Show library logs and warnings.")
    for name, (_, summary, reads_config) in VERBS.items():
        if not reads_config:
            continue  # built above, each with its own arguments
        sub = verbs.add_parser(
            name,
            help=summary,
            description=summary,
            formatter_class=argparse.RawDescriptionHelpFormatter,
            epilog="config keys (in CONFIG.yaml or as key=value):\n" + describe_keys(),
        )
        sub.add_argument(
            "config",
            metavar="CONFIG.yaml",
            help="YAML config file, or a finished run's output_dir (the config it was trained with).",
        )
        sub.add_argument("overrides", nargs="*", metavar="key=value", help="Override config keys.")
        sub.add_argument("-v", "--verbose", action="store_true", help="Show library logs and warnings.")
        if name == "sft":
            sub.add_argument(
                "--nproc", type=int, help="Training processes on this machine (torchrun); overrides nproc_per_node."
            )
        if name == "classify":
            sub.add_argument(
                "--text",
                dest="texts",
                action="append",
                help="A text to classify (repeatable); texts may also follow `--`; default: one per stdin line.",
            )
        if name == "export":
            sub.add_argument("--output", required=True, help="New directory for the merged model.")
            sub.add_argument("--gguf", action="store_true", help="Also write GGUF (needs llama.cpp's converter).")
            sub.add_argument(
                "--format",
                default="hf",
                choices=("hf", "vllm-classify"),
                help="hf: the merged model (default); vllm-classify: a model vLLM serves as a classifier "
                "(vllm serve DIR --runner pooling --convert classify).",
            )
        if name == "tune":
            sub.add_argument(
                "--trials",
                type=int,
                help="Run until the study has this many finished trials (default: tune.trials, else 20); "
                "run again with a higher number to extend a study.",
            )
        if name in ("cv", "audit"):
            sub.add_argument("--folds", type=int, default=5, help="Number of folds (default 5).")
        if name == "audit":
            sub.add_argument(
                "--split",
                default="train",
                choices=("train", "test", "all"),
                help="Rows to audit: train (out of fold), test (scored by the fold models, which never train on "
                "it) or all (default train).",
            )
            sub.add_argument(
                "--write-clean",
                metavar="FILE",
                help="Also write the training rows without the flagged ones to this new .csv or .jsonl file.",
            )
            sub.add_argument(
                "--relabel", action="store_true", help="With --write-clean: give flagged rows the suggested label."
            )
        if name == "generate-eval":
            sub.add_argument(
                "--unflagged",
                metavar="AUDIT_DIR",
                help="Also score the rows an audit of this split did not flag, reported beside the full figure.",
            )
        if name == "predict":
            sub.add_argument("--input", required=True, help="Unlabelled .csv, .tsv or .jsonl file.")
            sub.add_argument("--output", required=True, help="Where to write predictions (.csv, .tsv or .jsonl).")
            sub.add_argument(
                "--overwrite",
                action="store_true",
                help="Replace an existing --output that is not an earlier predict's (one is replaced anyway).",
            )
            sub.add_argument(
                "--text-column", help="Column holding the text; default: inferred (text, sentence, tweet, ...)."
            )
            sub.add_argument("--id-column", help="Column to copy as the row id; default: id/ID when present.")
            sub.add_argument(
                "--shard",
                default="0/1",
                help="Label only slice i of n (i from 0), e.g. 2/4: one file split across processes or machines.",
            )
            sub.add_argument(
                "--chunk-rows",
                type=int,
                default=512,
                help="Rows classified and saved per step (default 512); a killed run resumes from the last step.",
            )
        if name == "serve":
            _serve_options(sub)
    return parser


def _serve_options(sub) -> None:
    from instructemo.serve.settings import ServeSettings

    default = ServeSettings()  # the one place serve's defaults are set
    sub.add_argument(
        "--host", default=default.host, help=f"Address to listen on (default {default.host}: this machine only)."
    )
    sub.add_argument("--port", type=int, default=default.port, help=f"Port (default {default.port}).")
    sub.add_argument(
        "--api-key", help="Require Authorization: Bearer KEY on /v1 and /classify (or set INSTRUCTEMO_API_KEY)."
    )
    sub.add_argument(
        "--max-batch-size",
        type=int,
        default=default.max_batch_size,
        help=f"Texts per model call (default {default.max_batch_size}).",
    )
    sub.add_argument(
        "--max-wait-ms",
        type=float,
        default=default.max_wait_ms,
        help=f"At most this long a batch waits for the clients active during the last one (default "
        f"{default.max_wait_ms:g}), and never more than a tenth of the time the model took for the last batch.",
    )
    sub.add_argument(
        "--max-body-bytes",
        type=int,
        default=default.max_body_bytes,
        help=f"Largest request body in bytes (default {default.max_body_bytes}).",
    )
    sub.add_argument(
        "--max-texts",
        type=int,
        default=default.max_texts,
        help=f"Most texts in one request (default {default.max_texts}).",
    )
    sub.add_argument("--served-model-name", help="The model name clients see (default: the run directory's name).")


def _quiet_libraries(verbose: bool) -> None:
    level = logging.INFO if verbose else logging.WARNING
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s: %(message)s" if verbose else "%(message)s", datefmt="%H:%M:%S"
    )
    logging.getLogger("instructemo").setLevel(logging.INFO)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if not verbose:
        import warnings

        warnings.filterwarnings("ignore")
        for name in ("transformers", "trl", "peft", "datasets", "accelerate", "httpx", "huggingface_hub", "torch"):
            logging.getLogger(name).setLevel(level)
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()  # keep our own progress bars, not per-shard loading bars


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    """The verb's arguments; key=value overrides may come before or after options, and classify's texts after `--`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    texts = []
    if "--" in argv:
        cut = argv.index("--")
        argv, texts = argv[:cut], argv[cut + 1 :]
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    overrides = [a for a in extra if re.match(r"^[A-Za-z_]\w*=", a)]
    unknown = [a for a in extra if a not in overrides]
    if hasattr(args, "overrides"):
        args.overrides = [*args.overrides, *overrides]
        unknown += [o for o in args.overrides if not re.match(r"^[A-Za-z_]\w*=", o)]
    else:
        unknown += overrides
    if texts and args.verb != "classify":
        unknown += ["--", *texts]
    if unknown:
        hint = '; texts to classify go after --, e.g. -- "some text"' if args.verb == "classify" else ""
        raise UserError(f"{' '.join(map(repr, unknown))}: not key=value overrides or options of {args.verb}{hint}")
    if args.verb == "classify":
        args.texts = [*(args.texts or []), *texts]
    return args


def main(argv: list[str] | None = None) -> int:
    if threading.current_thread() is threading.main_thread():
        # A process started with SIGINT ignored (a script's background job, and so its children) never gets
        # KeyboardInterrupt: Ctrl-C, and the webui's Stop, must still end a run the clean way.
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        args = parse_arguments(argv)
    except UserError as exc:
        print(f"instructemo: error: {exc}", file=sys.stderr)
        return 2
    _quiet_libraries(args.verbose)
    try:
        verb = VERBS[args.verb]
        if verb.reads_config:
            verb.run(load_config(args.config, args.overrides), args)
        else:
            verb.run(args)
    except UserError as exc:
        if args.verbose and exc.__cause__ is not None:
            traceback.print_exception(exc.__cause__)
        print(f"instructemo: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # the machine refused a read or write: permissions, a full disk, a vanished path
        where = f" ({exc.filename})" if exc.filename else ""
        print(
            f"instructemo: error: {exc.strerror or exc}{where}; check the path, its permissions and free space",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        print("instructemo: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
