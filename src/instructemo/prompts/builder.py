"""Prompts: a jinja2 template renders the user turn; the model's chat template wraps it."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Sequence

import jinja2
from jinja2.sandbox import SandboxedEnvironment

from instructemo.data.labels import LabelSpace
from instructemo.data.records import Record
from instructemo.errors import UserError

# The top-level templates/ of the checkout, shipped in the package (pyproject.toml maps it there).
TEMPLATE_DIR = Path(str(resources.files("instructemo.templates")))
# Templates may come from strangers: the sandbox keeps them from reaching Python internals.
_ENV = SandboxedEnvironment(undefined=jinja2.StrictUndefined, keep_trailing_newline=False)


def builtin_templates() -> list[str]:
    return sorted(p.stem for p in TEMPLATE_DIR.glob("*.jinja"))


def load_template(name_or_path: str, dataset_default: str) -> jinja2.Template:
    """A template by name (templates/NAME.jinja), by path, or the dataset's default for 'auto'."""
    return compile_template(*template_source(name_or_path, dataset_default))


def template_source(name_or_path: str, dataset_default: str) -> tuple[str, Path]:
    """The text of the template load_template would compile, and its file (a run keeps the text it trained with)."""
    name = dataset_default if name_or_path == "auto" else name_or_path
    path = Path(name) if name.endswith(".jinja") else TEMPLATE_DIR / f"{name}.jinja"
    if not path.is_file():
        raise UserError(
            f"template {name!r} not found; use one of {', '.join(builtin_templates())} or a .jinja file path"
        )
    return path.read_text(encoding="utf-8"), path


def compile_template(text: str, origin: Path) -> jinja2.Template:
    try:
        return _ENV.from_string(text.strip())
    except jinja2.TemplateSyntaxError as exc:
        raise UserError(f"template {origin}:{exc.lineno}: {exc.message}; fix the jinja2 syntax") from None


def render_user_turn(template: jinja2.Template, text: str, label_space: LabelSpace) -> str:
    try:
        return template.render(
            text=text.strip(),
            labels=list(label_space.names),
            multi_label=label_space.multi_label,
            none_word=label_space.none_word,
        )
    except jinja2.UndefinedError as exc:
        raise UserError(
            f"template uses an unknown variable ({exc.message}); it can use text, labels, multi_label, none_word"
        ) from None
    except jinja2.exceptions.SecurityError as exc:
        raise UserError(
            f"template refused by the sandbox ({exc}); templates may only use text, labels, multi_label, none_word"
        ) from None


class PromptBuilder:
    """Chat messages for one task, with texts cut so prompt plus answer fit in cutoff_len tokens.

    Cutting the text, not the tokenized sequence, keeps the answer: truncating
    a long review from the right would otherwise train on a missing label.
    With `examples` earlier turns (few_shot per label) the whole conversation fits: each example's text
    is cut to an equal share of the budget, and the text classified gets the
    rest (at least that share).
    """

    def __init__(
        self, tokenizer, template: jinja2.Template, label_space: LabelSpace, cutoff_len: int, examples: int = 0
    ):
        self.tokenizer = tokenizer
        self.template = template
        self.label_space = label_space
        longest_answer = label_space.answer(label_space.names if label_space.multi_label else label_space.names[:1])
        longest_answer = max([longest_answer, *label_space.names], key=len)
        turn = self.messages("") + [{"role": "assistant", "content": longest_answer}]
        overhead = len(tokenizer.apply_chat_template(turn, tokenize=True, return_dict=False))
        self.text_budget = cutoff_len - overhead - 4
        if self.text_budget < 8:
            raise UserError(
                f"cutoff_len={cutoff_len} leaves no room for the text (the prompt alone takes {overhead} tokens); raise cutoff_len"
            )
        # An example costs a question and answer turn (with the longest answer) and its share of the text budget.
        self.shot_overhead = (
            len(tokenizer.apply_chat_template(turn + turn, tokenize=True, return_dict=False)) - overhead
        )
        self.shot_budget = (self.text_budget - examples * self.shot_overhead) // (examples + 1)
        if examples and self.shot_budget < 8:
            raise UserError(
                f"few_shot's {examples} examples ({len(label_space.names)} labels) do not fit in cutoff_len={cutoff_len} "
                f"(each takes {self.shot_overhead} tokens before its text); raise cutoff_len or lower few_shot"
            )
        self.truncated = 0

    def fit(self, text: str, count: bool = True, budget: int | None = None) -> str:
        budget = self.text_budget if budget is None else budget
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) <= budget:
            return text
        self.truncated += count
        return self.tokenizer.decode(ids[:budget])

    def _length(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def messages(self, text: str) -> list[dict[str, str]]:
        return [{"role": "user", "content": render_user_turn(self.template, text, self.label_space)}]

    def prompt(self, text: str, shots: Sequence[Record] = ()) -> list[dict[str, str]]:
        """The user turn for a text, cut to fit; after `shots`, each an earlier question and its answer."""
        turns, left = [], self.text_budget
        for shot in shots:  # each example's text is cut to its share; the text classified gets what is left
            cut = self.fit(shot.text, count=False, budget=self.shot_budget)
            left -= self.shot_overhead + self._length(cut)
            turns += self.messages(cut)
            turns.append({"role": "assistant", "content": self.label_space.answer(shot.labels)})
        return turns + self.messages(self.fit(text, budget=left))

    def training_example(self, record: Record) -> dict:
        """A conversational prompt/completion pair, the form trl trains on with completion-only loss."""
        return {
            "prompt": self.prompt(record.text),
            "completion": [{"role": "assistant", "content": self.label_space.answer(record.labels)}],
        }
