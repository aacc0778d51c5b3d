import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score, jaccard_score, precision_recall_fscore_support

from instructemo.labels import LabelSpace
from instructemo.metrics import binarize, score

SINGLE = LabelSpace(("a", "b", "c"))
MULTI = LabelSpace(("x", "y", "z"), multi_label=True)


def random_single(seed, n=200):
    rng = np.random.default_rng(seed)
    gold = [(SINGLE.names[i],) for i in rng.integers(0, 3, n)]
    pred = [(SINGLE.names[i],) for i in rng.integers(0, 3, n)]
    return gold, pred


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_single_label_matches_sklearn(seed):
    gold, pred = random_single(seed)
    m = score(gold, pred, SINGLE)
    y_true, y_pred = [g[0] for g in gold], [p[0] for p in pred]
    assert m["accuracy"] == pytest.approx(accuracy_score(y_true, y_pred))
    for avg in ("macro", "micro", "weighted"):
        assert m[f"{avg}_f1"] == pytest.approx(f1_score(y_true, y_pred, average=avg))
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=list(SINGLE.names))
    assert [m["per_class"][n]["f1"] for n in SINGLE.names] == pytest.approx(list(f))
    assert [m["per_class"][n]["support"] for n in SINGLE.names] == list(s)
    assert sum(map(sum, m["confusion_matrix"]["counts"])) == len(gold)
    assert m["invalid"] == 0


def test_invalid_is_wrong_and_counted():
    gold = [("a",), ("b",), ("c",), ("a",)]
    pred = [("a",), None, ("c",), None]
    m = score(gold, pred, SINGLE)
    assert m["accuracy"] == 0.5
    assert m["invalid"] == 2 and m["invalid_rate"] == 0.5
    assert m["per_class"]["b"]["recall"] == 0.0
    assert m["per_class"]["a"]["recall"] == 0.5
    assert m["confusion_matrix"]["counts"][1] == [0, 0, 0, 1]  # gold b -> invalid column


def random_multi(seed, n=200):
    rng = np.random.default_rng(seed)
    draw = lambda: tuple(name for name in MULTI.names if rng.random() < 0.4)  # noqa: E731
    return [draw() for _ in range(n)], [draw() for _ in range(n)]


@pytest.mark.parametrize("seed", [0, 1])
def test_multi_label_matches_sklearn(seed):
    gold, pred = random_multi(seed)
    m = score(gold, pred, MULTI)
    y_true, y_pred = binarize(gold, MULTI), binarize(pred, MULTI)
    assert m["exact_match"] == pytest.approx(accuracy_score(y_true, y_pred))
    assert m["jaccard"] == pytest.approx(jaccard_score(y_true, y_pred, average="samples", zero_division=1))
    for avg in ("macro", "micro", "weighted"):
        assert m[f"{avg}_f1"] == pytest.approx(f1_score(y_true, y_pred, average=avg, zero_division=0))
    assert m["label_confusion"]["x"]["tp"] == int((y_true[:, 0] & y_pred[:, 0]).sum())


def test_multi_label_invalid_scores_zero_even_for_empty_gold():
    gold = [(), ("x",), ()]
    pred = [None, ("x",), ()]
    m = score(gold, pred, MULTI)
    assert m["jaccard"] == pytest.approx(2 / 3)
    assert m["exact_match"] == pytest.approx(2 / 3)
    assert m["invalid"] == 1


def test_length_mismatch_is_a_bug():
    with pytest.raises(ValueError):
        score([("a",)], [], SINGLE)
