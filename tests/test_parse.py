import pytest

from instructemo.data.labels import LabelSpace
from instructemo.prompts.parse import parse_labels

EMOTION = LabelSpace(
    ("sadness", "joy", "love", "anger", "fear", "surprise"),
    synonyms={"joy": ("happy", "happiness"), "anger": ("angry",), "sadness": ("sad",), "surprise": ("surprised",)},
)
SEMEVAL = LabelSpace(
    (
        "anger",
        "anticipation",
        "disgust",
        "fear",
        "joy",
        "love",
        "optimism",
        "pessimism",
        "sadness",
        "surprise",
        "trust",
    ),
    multi_label=True,
    synonyms={"optimism": ("hopeful", "hope"), "pessimism": ("hopeless",), "anger": ("angry",)},
)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("joy", ("joy",)),
        ("  JOY.  ", ("joy",)),
        ("Joy!", ("joy",)),
        ("The emotion is: anger", ("anger",)),
        ("happy", ("joy",)),
        ("Happiness", ("joy",)),
        ("angry", ("anger",)),
        ("fears", ("fear",)),
        ("Surprised!", ("surprise",)),
        ("sadness, then joy", ("sadness",)),  # the first label named wins
        ("love\n", ("love",)),
    ],
)
def test_single_label(text, expected):
    assert parse_labels(text, EMOTION) == expected


@pytest.mark.parametrize("text", ["", "   ", "I cannot tell", "enjoyment", "neutral", "none", "lovely?"])
def test_single_label_invalid_is_none(text):
    assert parse_labels(text, EMOTION) is None


@pytest.mark.parametrize(
    "text, expected",
    [
        ("anger, disgust", ("anger", "disgust")),
        ("disgust, anger", ("anger", "disgust")),  # canonical order
        ("anger, anger, Anger.", ("anger",)),  # duplicates collapse
        ("Trust;joy|optimism", ("joy", "optimism", "trust")),
        ("hopeful and angry", ("anger", "optimism")),
        ("hopeless", ("pessimism",)),  # a whole word, not a prefix of "hope"
        ("none", ()),
        ("None.", ()),
        ("no emotion", ()),
    ],
)
def test_multi_label(text, expected):
    assert parse_labels(text, SEMEVAL) == expected


def test_multi_label_invalid_is_none():
    assert parse_labels("I am not sure", SEMEVAL) is None
    assert parse_labels("", SEMEVAL) is None


def test_labels_beat_none_words():
    assert parse_labels("none, but some anger", SEMEVAL) == ("anger",)


def test_a_labels_own_name_beats_another_labels_synonym():
    space = LabelSpace(("joy", "happy"), synonyms={"joy": ("happy",)})
    assert parse_labels("happy", space) == ("happy",)


def test_multiword_and_underscored_labels():
    space = LabelSpace(("very_positive", "positive", "negative"))
    assert parse_labels("Very positive!", space) == ("very_positive",)
    assert parse_labels("positive", space) == ("positive",)


from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from instructemo.prompts.parse import words  # noqa: E402


@given(st.text())
def test_never_crashes_and_never_invents_a_label(text):
    for space in (EMOTION, SEMEVAL):
        parsed = parse_labels(text, space)
        if parsed is None:
            continue
        assert set(parsed) <= set(space.names)
        tokens = " ".join(words(text))
        for label in parsed:  # each label is backed by its name, a synonym or an inflection in the text
            forms = (label, *space.synonyms.get(label, ()))
            assert any(" ".join(words(f)) in tokens for f in forms)
