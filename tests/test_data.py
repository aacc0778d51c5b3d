import json
from collections import Counter

import pytest
from conftest import EMOTION_ROWS, write_emotion_txt
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from instructemo.data import readers as readers
from instructemo.data.datasets import default_eval_spec, load_registry, load_split, resolve_label_space
from instructemo.errors import UserError

# --- the real files in ../shared/data ------------------------------------------------


def test_emotion_real_files(shared_data, tmp_path):
    train = load_split("emotion", tmp_path)
    assert len(train.records) == 16000
    counts = Counter(r.labels[0] for r in train.records)
    assert counts == {"joy": 5362, "sadness": 4666, "anger": 2159, "fear": 1937, "love": 1304, "surprise": 572}
    assert train.records[0].source.endswith("train.txt:2")  # line 1 is the header
    assert len(load_split("emotion:test", tmp_path).records) == 2000
    assert len(load_split("emotion:validation", tmp_path).records) == 2000
    assert len(load_split("emotion", tmp_path, max_samples=4000).records) == 4000


def test_semeval_real_files(shared_data, tmp_path):
    train = load_split("semeval2018_ec", tmp_path)
    assert len(train.records) == 6838 and train.label_space.multi_label
    counts = Counter(label for r in train.records for label in r.labels)
    assert counts["anger"] == 2544 and counts["trust"] == 357 and counts["surprise"] == 361
    assert sum(1 for r in train.records if not r.labels) == 204
    assert train.records[0].id.startswith("2017-En-")
    assert not any(r.text.endswith("\r") for r in train.records)
    assert len(load_split("semeval2018_ec:dev", tmp_path).records) == 886


def test_goemotions_real_files(shared_data, tmp_path):
    train = load_split("goemotions", tmp_path)
    assert len(train.records) == 43410
    counts = Counter(label for r in train.records for label in r.labels)
    assert counts["neutral"] == 14219 and counts["grief"] == 77
    # 1097 texts hold a '"'; in the file each is wrapped in quotes with inner quotes doubled
    assert sum('"' in r.text for r in train.records) == 1097
    assert sum('""' in r.text for r in train.records) < 5
    assert len(load_split("goemotions:test", tmp_path).records) == 5427


def test_imdb_real_files(shared_data, tmp_path):
    train, test = load_split("imdb", tmp_path), load_split("imdb:test", tmp_path)
    assert (len(train.records), len(test.records)) == (800, 200)
    assert Counter(r.labels[0] for r in test.records) == {"negative": 107, "positive": 93}


# --- every format from files the test writes ----------------------------------------


def registry(tmp_path, text):
    (tmp_path / "datasets.yaml").write_text(text)
    return tmp_path


def test_semicolon_without_header(tmp_path):
    write_emotion_txt(tmp_path / "e.txt", header=False)
    registry(
        tmp_path,
        "mine:\n  format: semicolon\n  header: false\n  splits: {train: e.txt}\n"
        "  labels: {names: [sadness, joy, love, anger, fear, surprise]}\n",
    )
    split = load_split("mine", tmp_path)
    assert len(split.records) == len(EMOTION_ROWS)
    assert split.records[0].text == EMOTION_ROWS[0][0]


def test_a_txt_file_with_another_header_does_not_train_on_it(tmp_path, caplog):
    """`message;feeling` is a header, not a row labelled `feeling`; a first row whose label recurs is data."""
    path = tmp_path / "mine.txt"
    path.write_text("message;feeling\ni am happy;joy\ni am sad;sadness\nso glad;joy\n")
    split = load_split(str(path), tmp_path)
    assert [r.labels for r in split.records] == [("joy",), ("sadness",), ("joy",)]
    assert "feeling" not in split.label_space.names and "read as the header" in caplog.text
    path.write_text("so glad;joy\ni am happy;joy\ni am sad;sadness\nso sad;sadness\n")  # no header
    assert len(load_split(str(path), tmp_path).records) == 4


def test_semicolon_splits_on_the_last_semicolon(tmp_path):
    (tmp_path / "e.txt").write_text("a;b;joy\n")
    registry(
        tmp_path, "mine:\n  format: semicolon\n  header: false\n  splits: {train: e.txt}\n  labels: {names: [joy]}\n"
    )
    assert load_split("mine", tmp_path).records[0].text == "a;b"


def test_tsv_binary_with_crlf(tmp_path):
    (tmp_path / "s.tsv").write_bytes(b"ID\tTweet\tx\ty\r\n1\thello \xe2\x80\xa8 there\t1\t0\r\n2\tnothing\t0\t0\r\n")
    registry(
        tmp_path,
        "mine:\n  format: tsv_binary\n  text_column: Tweet\n  id_column: ID\n  splits: {train: s.tsv}\n"
        "  labels: {names: [x, y], multi_label: true}\n",
    )
    records = load_split("mine", tmp_path).records
    assert [(r.id, r.labels) for r in records] == [("1", ("x",)), ("2", ())]
    assert records[0].text == "hello \u2028 there"  # U+2028 is not a line end


def test_tsv_ids_with_names_file_and_quotes(tmp_path):
    (tmp_path / "names.txt").write_text("x\ny\nz")
    (tmp_path / "g.tsv").write_text('plain text\t0,2\tid1\n"she said ""hi"""\t1\tid2\n')
    registry(
        tmp_path,
        "mine:\n  format: tsv_ids\n  names_file: names.txt\n  splits: {train: g.tsv}\n"
        "  labels: {names: [x, y, z], multi_label: true}\n",
    )
    records = load_split("mine", tmp_path).records
    assert [(r.text, r.labels, r.id) for r in records] == [
        ("plain text", ("x", "z"), "id1"),
        ('she said "hi"', ("y",), "id2"),
    ]


def test_csv_with_where_filter_and_multilabel_cells(tmp_path):
    (tmp_path / "d.csv").write_text('text,label,fold\n"hello, world","x,y",a\nbye,y,b\n')
    registry(
        tmp_path,
        "mine:\n  format: csv\n  splits: {train: {file: d.csv, where: {fold: a}}, test: {file: d.csv, where: {fold: b}}}\n"
        "  labels: {names: [x, y], multi_label: true}\n",
    )
    assert [r.labels for r in load_split("mine", tmp_path).records] == [("x", "y")]
    assert [r.text for r in load_split("mine:test", tmp_path).records] == ["bye"]
    assert default_eval_spec("mine", tmp_path) == "mine:test"


def test_jsonl_path_dataset_infers_columns_and_labels(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps({"sentence": t, "emotion": l}) for t, l in EMOTION_ROWS) + "\n")
    split = load_split(str(path), tmp_path)
    assert len(split.records) == len(EMOTION_ROWS)
    assert split.label_space.names == ("anger", "fear", "joy", "love", "sadness", "surprise")
    assert not split.label_space.multi_label


def test_jsonl_lists_make_a_multilabel_space(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "a", "labels": ["x", "y"]}\n{"text": "b", "labels": []}\n')
    space, template = resolve_label_space(str(path), tmp_path)
    assert space.multi_label and space.names == ("x", "y") and template == "multi_label"


def test_csv_path_dataset_with_named_columns(tmp_path):
    path = tmp_path / "mine.csv"
    path.write_text("review,stars\ngreat,positive\nawful,negative\n")
    split = load_split(str(path), tmp_path, text_column="review", label_column="stars")
    assert [r.labels for r in split.records] == [("positive",), ("negative",)]


def test_user_registry_overrides_and_extends(tmp_path):
    registry(tmp_path, "mine:\n  format: jsonl\n  splits: {train: x.jsonl}\n  labels: {names: [a]}\n")
    entries = load_registry(tmp_path)
    assert {"emotion", "semeval2018_ec", "goemotions", "imdb", "mine"} <= set(entries)


def test_dataset_dir_is_searched_before_shared(emotion_dir):
    split = load_split("emotion", emotion_dir)
    assert split.origin == str(emotion_dir / "emotion" / "train.txt")
    assert len(split.records) == len(EMOTION_ROWS)


def test_hub_fallback_maps_class_labels(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    features = datasets.Features(
        {
            "text": datasets.Value("string"),
            "label": datasets.ClassLabel(names=["sadness", "joy", "love", "anger", "fear", "surprise"]),
        }
    )
    calls = []

    def fake_load_dataset(repo, config, split):
        calls.append((repo, config, split))
        return datasets.Dataset.from_dict({"text": ["so glad", "so sad"], "label": [1, 0]}, features=features)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    monkeypatch.setattr(readers, "shared_data_dir", lambda: tmp_path / "nowhere")
    split = load_split("emotion:test", tmp_path)
    assert calls == [("dair-ai/emotion", "split", "test")]
    assert [r.labels for r in split.records] == [("joy",), ("sadness",)]
    assert split.origin == "hub:dair-ai/emotion"


def test_hub_failure_is_a_clear_error(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: (_ for _ in ()).throw(ConnectionError("offline")))
    monkeypatch.setattr(readers, "shared_data_dir", lambda: tmp_path / "nowhere")
    with pytest.raises(UserError, match="no local file, and the hub copy dair-ai/emotion failed to load"):
        load_split("emotion", tmp_path)


# --- bad input -------------------------------------------------------------------------


def test_unknown_dataset_suggests_the_nearest(tmp_path):
    with pytest.raises(UserError, match="unknown dataset 'emotoin'.*did you mean 'emotion'"):
        load_split("emotoin", tmp_path)


def test_unknown_split(tmp_path):
    with pytest.raises(UserError, match="has no split 'tset'; it has train, validation, test"):
        load_split("emotion:tset", tmp_path)


def test_missing_file(tmp_path):
    with pytest.raises(UserError, match="dataset file .*nope.csv not found"):
        load_split(str(tmp_path / "nope.csv"), tmp_path)
    registry(tmp_path, "mine:\n  format: jsonl\n  splits: {train: gone.jsonl}\n  labels: {names: [a]}\n")
    with pytest.raises(UserError, match="file gone.jsonl not found"):
        load_split("mine", tmp_path)


def test_label_outside_the_space_gives_count_and_examples(tmp_path):
    rows = EMOTION_ROWS + [("i feel meh", "boredom"), ("so dull", "boredom")]
    write_emotion_txt(tmp_path / "emotion" / "train.txt", rows)
    with pytest.raises(UserError) as info:
        load_split("emotion", tmp_path)
    message = str(info.value)
    assert "2 bad row(s)" in message and "set on_bad_rows: skip" in message
    assert f"train.txt:{len(EMOTION_ROWS) + 2}: label(s) ['boredom'] outside the label space" in message


@pytest.mark.parametrize(
    "content, message",
    [
        (b"text;label_name\n", "has no usable rows"),
        (b"text;label_name\ni am happy;joy\nno separator here\n", r"train.txt:3: expected 'text;label'"),
        (b"text;label_name\ni am happy;joy\n ;joy\n", r"train.txt:3: empty text"),
        (b"text;label_name\ni am happy;joy\nbad \xff byte;joy\n", r"train.txt:3: invalid UTF-8"),
    ],
)
def test_bad_rows_are_reported_with_file_and_line(tmp_path, content, message):
    (tmp_path / "emotion").mkdir()
    (tmp_path / "emotion" / "train.txt").write_bytes(content)
    with pytest.raises(UserError, match=message):
        load_split("emotion", tmp_path)


@pytest.mark.parametrize(
    "files, entry, message",
    [
        (
            {"d.csv": "words,label\nhi,x\n"},
            "format: csv\n  splits: {train: d.csv}\n  labels: {names: [x]}",
            r"missing column\(s\) \['text'\]",
        ),
        (
            {"d.csv": "text,label\nok,x\ntoo,many,fields\n"},
            "format: csv\n  splits: {train: d.csv}\n  labels: {names: [x]}",
            r"d.csv:3: expected 2 fields",
        ),
        (
            {"s.tsv": "Tweet\tx\nhello\tyes\n"},
            "format: tsv_binary\n  text_column: Tweet\n  splits: {train: s.tsv}\n  labels: {names: [x], multi_label: true}",
            r"s.tsv:2: column 'x' must be 0 or 1",
        ),
        (
            {"names.txt": "x\ny", "g.tsv": "text\t5\tid\n"},
            "format: tsv_ids\n  names_file: names.txt\n  splits: {train: g.tsv}\n  labels: {names: [x, y], multi_label: true}",
            r"g.tsv:1: label id '5' is not an index",
        ),
    ],
)
def test_bad_files_of_a_registry_entry(tmp_path, files, entry, message):
    for name, content in files.items():
        (tmp_path / name).write_text(content)
    registry(tmp_path, f"mine:\n  {entry}\n")
    with pytest.raises(UserError, match=message):
        load_split("mine", tmp_path)


def test_bad_registry_entry(tmp_path):
    registry(tmp_path, "mine:\n  format: parquet\n  splits: {train: x}\n  labels: {names: [a]}\n")
    with pytest.raises(UserError, match="format 'parquet'"):
        load_registry(tmp_path)


# --- bad rows: counted, reported with file and line, skipped on request -------------

BAD_ROWS = (
    b"text;label_name\n"
    b"i am happy;joy\n"
    b" ;joy\n"  # 3: empty text
    b"i am bored;boredom\n"  # 4: label outside the space
    b"no separator here\n"  # 5: wrong number of fields
    b"bad \xff byte;joy\n"  # 6: invalid UTF-8
    b"i am sad;sadness\n"
)


def test_every_kind_of_bad_row_is_counted_with_its_line(tmp_path):
    (tmp_path / "emotion").mkdir()
    (tmp_path / "emotion" / "train.txt").write_bytes(BAD_ROWS)
    with pytest.raises(UserError) as info:
        load_split("emotion", tmp_path)
    assert "4 bad row(s)" in str(info.value) and "on_bad_rows: skip" in str(info.value)
    split = load_split("emotion", tmp_path, on_bad_rows="skip")
    assert [r.text for r in split.records] == ["i am happy", "i am sad"]
    reasons = {row.source.rsplit(":", 1)[1]: row.reason for row in split.skipped}
    assert set(reasons) == {"3", "4", "5", "6"}
    assert (
        reasons["3"] == "empty text" and "boredom" in reasons["4"] and "';'" in reasons["5"] and "UTF-8" in reasons["6"]
    )


def test_repeated_ids_are_bad_rows(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text(
        "".join(json.dumps({"id": i, "text": t, "label": "x"}) + "\n" for i, t in [(1, "a"), (2, "b"), (1, "c")])
    )
    with pytest.raises(UserError, match=r"d.jsonl:3: id '1' repeats the row at .*d.jsonl:1"):
        load_split(str(data), tmp_path)
    assert [r.text for r in load_split(str(data), tmp_path, on_bad_rows="skip").records] == ["a", "b"]


def test_skip_with_nothing_left_is_an_error(tmp_path):
    (tmp_path / "emotion").mkdir()
    (tmp_path / "emotion" / "train.txt").write_bytes(b"text;label_name\n ;joy\n")
    with pytest.raises(UserError, match="no usable rows"):
        load_split("emotion", tmp_path, on_bad_rows="skip")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=300))
def test_readers_never_crash_on_arbitrary_bytes(tmp_path, content):
    """Any file either loads into labels from the space or fails with a UserError, never another exception."""
    for name, suffix in (("emotion", ".txt"), ("path", ".jsonl"), ("path", ".csv")):
        if name == "emotion":
            (tmp_path / "emotion").mkdir(exist_ok=True)
            target, spec = tmp_path / "emotion" / "train.txt", "emotion"
        else:
            target = tmp_path / f"any{suffix}"
            spec = str(target)
        target.write_bytes(content)
        for policy in ("error", "skip"):
            try:
                split = load_split(spec, tmp_path, on_bad_rows=policy)
            except UserError:
                continue
            assert split.records and all(set(r.labels) <= set(split.label_space.names) for r in split.records)
