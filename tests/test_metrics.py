import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score, jaccard_score, precision_recall_fscore_support

from instructemo.data.labels import LabelSpace, binarize
from instructemo.evaluate.metrics import score

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


# --- scikit-learn replacements: the same figures as the hand-written code they replaced --------------------------


def _hand_written_thresholds(probabilities, gold):
    """best_thresholds as written before precision_recall_curve served it."""
    thresholds, f1s = np.ones(probabilities.shape[1]), np.zeros(probabilities.shape[1])
    for k in range(probabilities.shape[1]):
        p, y = probabilities[:, k], gold[:, k].astype(bool)
        if not y.any():
            continue
        order = np.argsort(-p, kind="stable")
        f1 = 2 * np.cumsum(y[order]) / (np.arange(1, len(p) + 1) + y.sum())
        f1 = np.where(np.r_[p[order][1:] < p[order][:-1], True], f1, -1.0)
        best = int(np.argmax(f1))
        thresholds[k], f1s[k] = p[order][best], f1[best]
    return thresholds, f1s


def _hand_written_jaccard_and_exact(y_true, y_pred, valid):
    union, overlap = (y_true | y_pred).sum(axis=1), (y_true & y_pred).sum(axis=1)
    jaccard = np.where(union == 0, 1.0, overlap / np.maximum(union, 1)) * valid
    return jaccard.mean(), ((y_true == y_pred).all(axis=1) & valid).mean()


@pytest.mark.parametrize("seed", range(20))
def test_thresholds_from_precision_recall_curve_match_the_hand_written_search(seed):
    from instructemo.evaluate.metrics import best_thresholds

    rng = np.random.default_rng(seed)
    rows = int(rng.integers(1, 80))
    gold = rng.random((rows, 4)) < [0.5, 0.1, 0.9, 0.0]
    probabilities = np.clip(gold * 0.3 + rng.random((rows, 4)) * 0.7, 0, 1).round(int(rng.integers(1, 4)))  # ties
    new, old = best_thresholds(probabilities, gold), _hand_written_thresholds(probabilities, gold)
    np.testing.assert_array_equal(new[0], old[0])
    np.testing.assert_allclose(new[1], old[1], rtol=1e-12)


@pytest.mark.parametrize("seed", range(20))
def test_jaccard_and_exact_match_from_scikit_learn_match_the_hand_written_ones(seed):
    rng = np.random.default_rng(seed)
    space = LabelSpace(("a", "b", "c"), multi_label=True)
    rows = int(rng.integers(1, 40))
    gold = [tuple(n for n in space.names if rng.random() < 0.3) for _ in range(rows)]
    predicted = [
        None if rng.random() < 0.2 else tuple(n for n in space.names if rng.random() < 0.3) for _ in range(rows)
    ]
    m = score(gold, predicted, space)
    valid = np.array([p is not None for p in predicted])
    jaccard, exact = _hand_written_jaccard_and_exact(binarize(gold, space), binarize(predicted, space), valid)
    assert m["jaccard"] == pytest.approx(jaccard, abs=1e-12)
    assert m["exact_match"] == pytest.approx(exact, abs=1e-12)
