"""Map generated text back to labels, or to None when it names none (invalid).

Matching ignores case, whitespace and punctuation, and knows each label's
synonyms and simple inflections (`angry` -> anger when the label space lists it,
`fears` -> fear always). Invalid text is never guessed into a label.
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache

from instructemo.data.labels import LabelSpace

_WORD = re.compile(r"[^\W_]+")
_SUFFIXES = ("", "s", "es", "ed", "d", "ing")
# Ways to say "no label" in a multi-label answer, besides the label space's none_word.
_NONE_PHRASES = ("none", "no emotion", "no emotions", "nothing", "neutral")


def words(text: str) -> tuple[str, ...]:
    """Lower-case word tokens with punctuation and underscores dropped."""
    return tuple(_WORD.findall(unicodedata.normalize("NFKC", text).casefold()))


@lru_cache(maxsize=64)
def _lexicon(space: LabelSpace) -> dict[tuple[str, ...], str]:
    """Every phrase (as a word tuple) that names a label."""
    phrases: dict[tuple[str, ...], str] = {}
    for name in space.names:
        for form in (name, *space.synonyms.get(name, ())):
            tokens = words(form)
            if not tokens:
                continue
            for suffix in _SUFFIXES:
                phrases.setdefault(tokens[:-1] + (tokens[-1] + suffix,), name)
    # A label's own name wins over another label's synonym or inflection.
    for name in space.names:
        phrases[words(name)] = name
    return phrases


@lru_cache(maxsize=64)
def _none_phrases(space: LabelSpace) -> frozenset[tuple[str, ...]]:
    lexicon = _lexicon(space)
    candidates = {words(space.none_word), *(words(p) for p in _NONE_PHRASES)}
    return frozenset(p for p in candidates if p and p not in lexicon)


def _mentions(tokens: tuple[str, ...], phrases) -> list[tuple[int, tuple[str, ...]]]:
    """(position, phrase) for each phrase occurrence, longest phrase first at each position."""
    longest = max((len(p) for p in phrases), default=0)
    found = []
    i = 0
    while i < len(tokens):
        for size in range(min(longest, len(tokens) - i), 0, -1):
            candidate = tokens[i : i + size]
            if candidate in phrases:
                found.append((i, candidate))
                i += size
                break
        else:
            i += 1
    return found


def parse_labels(text: str, space: LabelSpace) -> tuple[str, ...] | None:
    """Labels named in `text`: the first for single-label, all (canonical order) for multi-label.

    Returns None when the text names no label (and, for multi-label, does not
    say "none" either): the caller counts it invalid.
    """
    tokens = words(text)
    lexicon = _lexicon(space)
    named = [lexicon[phrase] for _, phrase in _mentions(tokens, lexicon)]
    if not space.multi_label:
        return (named[0],) if named else None
    if named:
        return space.canonical(named)
    if _mentions(tokens, _none_phrases(space)):
        return ()
    return None
