"""MkDocs hooks: the config reference is generated from the Config dataclass, and bench plots ship with the site.

`mkdocs build --strict` (make lint, so CI) fails on a broken link, a missing
page or an anchor that is not there.
"""

from pathlib import Path

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[1]
CONFIG_KEYS = "<!-- config-keys -->"
GROUP_TITLES = {
    "model": "Model",
    "data": "Data",
    "finetuning": "Fine-tuning",
    "inference": "Inference: generate-eval, predict, serve",
    "tune": "Hyperparameter search",
}


def on_page_markdown(markdown, page, config, files):
    if CONFIG_KEYS not in markdown:
        return markdown
    from instructemo.config.schema import FIELDS, keys_by_group

    rows = []
    for group, names in keys_by_group().items():
        rows += ["", f"## {GROUP_TITLES[group]}", "", "| key | default | what it does |", "|---|---|---|"]
        for name in names:
            field = FIELDS[name]
            meta = field.metadata
            default = "null" if field.default is None else field.default
            limits = []
            if meta["choices"]:
                limits.append("one of " + ", ".join(f"`{c}`" for c in meta["choices"]))
            if meta["minimum"] is not None:
                limits.append(f"at least {meta['minimum']}")
            if meta["maximum"] is not None:
                limits.append(f"at most {meta['maximum']}")
            if meta["resume_neutral"]:
                limits.append("may change on resume")
            help_text = meta["help"] + (f" ({'; '.join(limits)})" if limits else "")
            rows.append(f"| `{name}` | `{default}` | {help_text.replace('|', '&#124;')} |")
    return markdown.replace(CONFIG_KEYS, "\n".join(rows))


def on_files(files, config):
    """The plots under bench/results, served at bench/results/ so the results page can show them."""
    for image in sorted((ROOT / "bench" / "results").glob("*.png")):
        files.append(
            File(
                image.relative_to(ROOT).as_posix(),
                src_dir=str(ROOT),
                dest_dir=config["site_dir"],
                use_directory_urls=config["use_directory_urls"],
            )
        )
    return files
