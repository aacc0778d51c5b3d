"""Every command the README and the docs show runs as written: verbs, options and config keys are checked without training.

Each `instructemo ...` line (in code blocks, indented code and inline code) is
parsed by the CLI's own parser; its config (an example file, or a run folder
the examples write, which stands for the example's config) is loaded with the
command's overrides, so a key or value the config refuses fails here. Placeholders
(CONFIG, RUN_DIR, FILE ...) take a real value of their kind. `--help` lines, the
registry listing and the make targets and bench scripts it names are run or
looked up for real.
"""

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from instructemo.cli import VERBS, parse_arguments
from instructemo.config.schema import load_config

ROOT = Path(__file__).resolve().parents[1]
PAGES = [
    "README.md",
    "examples/README.md",
    *sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").rglob("*.md")),
]
READMES = {name: (ROOT / name).read_text(encoding="utf-8") for name in PAGES}
ALL_PAGES = "\n".join(READMES.values())
EXAMPLES = ROOT / "examples"

# What a placeholder stands for: a value of its kind that exists in the project.
PLACEHOLDERS = {
    "CONFIG.yaml": "examples/smollm2_emotion.yaml",
    "examples/<file>.yaml": "examples/smollm2_emotion.yaml",
    "CONFIG": "examples/smollm2_emotion.yaml",
    "my.yaml": "examples/smollm2_emotion.yaml",
    "OUT/best.yaml": "examples/minilm_head_emotion.yaml",
    "RUN_DIR": "saves/minilm-head-emotion",
    "FILE": "texts.csv",
    "DIR": "saves/elsewhere",
    "KEY": "a-secret",
    "N": "2",
    "K": "3",
}


def readme_commands(text: str) -> list[tuple[int, str]]:
    """(line, command) for every instructemo command a README shows, as a user would type it."""
    found = []
    fenced = False
    for number, line in enumerate(text.splitlines(), 1):
        if line.startswith("```"):
            fenced = not fenced
            continue
        code = fenced or line.startswith("    ")
        if code and not line.lstrip().startswith("instructemo: error"):
            match = re.search(r"(?:^|\s)(?:\.venv/bin/)?(instructemo\s[^#]*)", line)
            if match:
                found += [(number, part.strip()) for part in match.group(1).split("&&")]
    for match in re.finditer(r"`((?:\.venv/bin/)?instructemo\s[^`]*)`", text):
        if not match.group(1).startswith("instructemo:"):
            found.append((text.count("\n", 0, match.start()) + 1, " ".join(match.group(1).split())))
    return sorted(set(found))


def concrete(command: str) -> list[str]:
    """The command's arguments with placeholders filled in, optional parts included and the first of choices a|b."""
    command = re.sub(r"\[([^\]]*)\]", r"\1", command).replace(" ...", "")
    words = shlex.split(command)[1:]
    return [
        PLACEHOLDERS.get(word, word.split("|")[0] if word.startswith(("hf|", "generate|")) else word) for word in words
    ]


def config_of(path: str) -> Path:
    """A config file as given, or the example whose output_dir is this run folder (the run stands for it)."""
    if path.endswith((".yaml", ".yml")):
        return ROOT / path
    writers = [
        p for p in EXAMPLES.glob("*.yaml") if re.search(rf"^output_dir:\s*{re.escape(path)}\s*$", p.read_text(), re.M)
    ]
    assert writers, f"no example writes the run folder {path}"
    return writers[0]


COMMANDS = [(f"{name}:{line}", command) for name, text in READMES.items() for line, command in readme_commands(text)]


def test_the_readme_shows_commands_of_every_verb():
    verbs = {shlex.split(command)[1] for _, command in COMMANDS if len(shlex.split(command)) > 1}
    assert set(VERBS) <= verbs


@pytest.mark.parametrize("line, command", COMMANDS, ids=[where for where, _ in COMMANDS])
def test_a_readme_command_parses_and_its_config_loads(line, command, monkeypatch, tmp_path):
    argv = concrete(command)
    if len(argv) == 1 or "--help" in argv:  # a verb named in prose, or its help: the verb exists
        assert argv[0] in VERBS, f"{line}: {command}"
        return
    args = parse_arguments(argv)  # a UserError or SystemExit here: an option or argument the CLI does not take
    runs = [args.config] if hasattr(args, "config") else getattr(args, "runs", [])
    monkeypatch.chdir(ROOT)
    for run in runs:
        load_config(str(config_of(run)), getattr(args, "overrides", []))


@pytest.mark.parametrize("name", sorted(set(re.findall(r"\bbench/[\w/]+\.(?:py|sh)", ALL_PAGES))))
def test_every_bench_script_the_readme_names_exists(name):
    assert (ROOT / name).is_file(), name


def test_every_make_target_the_readme_names_exists():
    targets = set(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), re.M))
    named = set(re.findall(r"`make ([\w-]+)`|^make ([\w-]+)", ALL_PAGES, re.M))
    assert {a or b for a, b in named} <= targets


@pytest.mark.slow
@pytest.mark.parametrize("argv", [["sft", "--help"], ["datasets"]])
def test_the_readme_commands_that_change_nothing_run(argv):
    result = subprocess.run(
        [sys.executable, "-m", "instructemo.cli", *argv], capture_output=True, text=True, cwd=ROOT, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip()
