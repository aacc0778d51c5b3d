"""Label spaces: the names a task can answer with, and how answers are written."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np

from instructemo.errors import UserError


@dataclass(frozen=True)
class LabelSpace:
    """The labels of one task, in their canonical order."""

    names: tuple[str, ...]
    multi_label: bool = False
    # Other words a model may use for a label: {"joy": ("happy", "happiness")}.
    synonyms: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # What a multi-label answer says when no label applies.
    none_word: str = "none"

    def __hash__(self) -> int:  # the synonyms dict is not hashable on its own
        return hash((self.names, self.multi_label, tuple(sorted(self.synonyms.items())), self.none_word))

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str) -> "LabelSpace":
        names = tuple(str(n) for n in data.get("names") or ())
        if not names:
            raise UserError(f"{where}: the label space needs a non-empty 'names' list")
        if len(set(names)) != len(names):
            raise UserError(f"{where}: label names repeat: {sorted(n for n in names if names.count(n) > 1)}")
        synonyms = {str(k): tuple(str(s) for s in v) for k, v in (data.get("synonyms") or {}).items()}
        unknown = sorted(set(synonyms) - set(names))
        if unknown:
            raise UserError(f"{where}: synonyms given for labels not in names: {unknown}")
        space = cls(names, bool(data.get("multi_label", False)), synonyms, str(data.get("none_word", "none")))
        if space.multi_label and space.none_word in names:
            raise UserError(f"{where}: none_word {space.none_word!r} is also a label; pick another none_word")
        return space

    def to_dict(self) -> dict[str, Any]:
        return {
            "names": list(self.names),
            "multi_label": self.multi_label,
            "synonyms": {k: list(v) for k, v in self.synonyms.items()},
            "none_word": self.none_word,
        }

    def canonical(self, labels: Iterable[str]) -> tuple[str, ...]:
        """Labels in the label space's order, without repeats."""
        chosen = set(labels)
        return tuple(n for n in self.names if n in chosen)

    def answer(self, labels: Iterable[str]) -> str:
        """The training target: one name, or the names in canonical order joined by ', '."""
        ordered = self.canonical(labels)
        if not self.multi_label:
            if len(ordered) != 1:
                raise ValueError(f"single-label answer needs exactly one label, got {ordered}")
            return ordered[0]
        return ", ".join(ordered) if ordered else self.none_word


def binarize(rows: Sequence[tuple[str, ...] | None], space: LabelSpace) -> np.ndarray:
    """Rows of label names as a 0/1 matrix, one column per label of the space in its order."""
    index = {name: i for i, name in enumerate(space.names)}
    matrix = np.zeros((len(rows), len(space.names)), dtype=int)
    for r, labels in enumerate(rows):
        for label in labels or ():
            matrix[r, index[label]] = 1
    return matrix
