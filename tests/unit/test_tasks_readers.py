"""Generic task-data readers on tiny files: formats, column picking, labels, label files, dev carving."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lmforge.core.errors import ConfigError, DataError
from lmforge.tasks import readers
from lmforge.tasks.readers import (
    LabelSet,
    Table,
    attach_labels,
    carve_split,
    column_name,
    column_values,
    detect_format,
    discover_labels,
    read_label_file,
    read_table,
)

pytestmark = pytest.mark.unit


def write(path: Path, text: str) -> Path:
    path.write_bytes(text.encode("utf-8"))
    return path


# --- formats -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("a.csv", "csv"),
        ("a.TSV", "tsv"),
        ("a.tab", "tsv"),
        ("a.jsonl", "jsonl"),
        ("a.ndjson", "jsonl"),
        ("a.json", "jsonl"),
        ("a.parquet", "parquet"),
        ("a.pq", "parquet"),
        ("a.jsonl.gz", "jsonl"),
        ("hf://nyu-mll/glue?config=sst2", "hf"),
    ],
)
def test_detect_format_by_extension(path, expected):
    assert detect_format(path, "auto", "k") == expected


def test_detect_format_errors_name_key_path_and_way_out():
    with pytest.raises(ConfigError) as err:
        detect_format("data/train.txt", "auto", "tasks.x.train")
    message = str(err.value)
    assert "tasks.x.train" in message and "data/train.txt" in message
    assert ".csv" in message and ".parquet" in message and "format:" in message
    assert detect_format("data/train.txt", "tsv", "k") == "tsv"
    with pytest.raises(ConfigError, match="'xml' is not one of auto, csv, tsv, jsonl, parquet"):
        detect_format("a.csv", "xml", "k")
    with pytest.raises(ConfigError, match="does not apply to the hub"):
        detect_format("hf://a/b", "csv", "k")


def test_tsv_with_header_keeps_bare_quotes_and_skips_blank_lines(tmp_path):
    file = write(tmp_path / "a.tsv", 'sentence\tlabel\n"quoted" start \t1\n\n  \nit \'s "fine\t0\n')
    table = read_table(str(file), None, "k")
    assert table.columns == ["sentence", "label"]
    assert table.rows == [
        {"sentence": '"quoted" start ', "label": "1"},
        {"sentence": "it 's \"fine", "label": "0"},
    ]
    assert table.lines == [2, 5]
    assert table.where(1) == f"{file}:5"
    assert table.skipped == []


def test_headerless_tsv_names_columns_by_position_and_crlf(tmp_path):
    file = write(tmp_path / "a.tsv", "good movie\t1\r\nbad movie\t0\r\n")
    table = read_table(str(file), None, "k", header=False)
    assert table.columns == ["0", "1"]
    assert table.rows == [{"0": "good movie", "1": "1"}, {"0": "bad movie", "1": "0"}]
    assert table.lines == [1, 2]


def test_wrong_field_count_is_skipped_and_reported(tmp_path):
    file = write(tmp_path / "a.tsv", "text\tlabel\na\t1\nb\t0\textra\nc\n d\t1\n")
    table = read_table(str(file), None, "k")
    assert [row["text"] for row in table.rows] == ["a", " d"]
    assert table.lines == [2, 5]
    assert table.skipped == [f"{file}:3: expected 2 fields, found 3", f"{file}:4: expected 2 fields, found 1"]


def test_csv_quoted_commas_and_newlines_keep_first_line_numbers(tmp_path):
    text = 'text,label\n"hello, world",1\n\n"two\nlines",0\nplain,1\n'
    file = write(tmp_path / "a.csv", text)
    table = read_table(str(file), None, "k")
    assert table.rows == [
        {"text": "hello, world", "label": "1"},
        {"text": "two\nlines", "label": "0"},
        {"text": "plain", "label": "1"},
    ]
    assert table.lines == [2, 4, 6]


def test_headerless_csv(tmp_path):
    file = write(tmp_path / "a.csv", '1,"a, b"\n0,c\n')
    table = read_table(str(file), None, "k", header=False)
    assert table.columns == ["0", "1"]
    assert table.rows[0] == {"0": "1", "1": "a, b"}


def test_bom_is_stripped(tmp_path):
    file = tmp_path / "a.csv"
    file.write_bytes("\ufefftext,label\nx,1\n".encode())
    table = read_table(str(file), None, "k")
    assert table.columns == ["text", "label"]


def test_bad_header_names_the_problem(tmp_path):
    duplicate = write(tmp_path / "dup.csv", "text,text\na,b\n")
    with pytest.raises(
        DataError, match=r"dup\.csv:1: the header line has duplicate names \['text'\].*header: false"
    ):
        read_table(str(duplicate), None, "k")
    empty = write(tmp_path / "empty.tsv", "\n\ttext\na\tb\n")
    with pytest.raises(DataError, match=r"empty\.tsv:2: .*empty names at positions 0"):
        read_table(str(empty), None, "k")


def test_not_utf8_names_the_line(tmp_path):
    file = tmp_path / "a.tsv"
    file.write_bytes(b"text\tlabel\nok\t1\nbad \xff\t0\n")
    with pytest.raises(DataError, match=r"k: .*a\.tsv:3: not UTF-8"):
        read_table(str(file), None, "k")


def test_jsonl_bad_lines_are_counted_and_keys_unioned(tmp_path):
    lines = ['{"text": "a", "label": 1}', "{broken", "[1, 2]", "", '{"text": "b", "extra": true}']
    file = write(tmp_path / "a.jsonl", "\n".join(lines) + "\n")
    table = read_table(str(file), None, "k")
    assert table.columns == ["text", "label", "extra"]
    assert table.rows == [
        {"text": "a", "label": 1, "extra": None},
        {"text": "b", "label": None, "extra": True},
    ]
    assert table.lines == [1, 5]
    assert len(table.skipped) == 2
    assert table.skipped[0].startswith(f"{file}:2: not valid JSON")
    assert table.skipped[1] == f"{file}:3: expected a JSON object, found list"


def test_json_array_file_gives_one_record_per_item(tmp_path):
    file = write(tmp_path / "a.json", '[\n  {"text": "a"},\n  3,\n  {"text": "b", "label": 1}\n]\n')
    table = read_table(str(file), None, "k")
    assert table.columns == ["text", "label"]
    assert table.rows == [{"text": "a", "label": None}, {"text": "b", "label": 1}]
    assert table.where(1) == f"{file} row 3"
    assert table.skipped == [f"{file} row 2: expected a JSON object, found int"]


def test_broken_pretty_json_says_json_lines_are_expected(tmp_path):
    file = write(tmp_path / "a.json", '{\n  "data": [1, 2\n}\n')
    with pytest.raises(DataError, match=r"holds no usable jsonl record: .*one JSON object per line\)$"):
        read_table(str(file), None, "k")


def test_gzipped_jsonl(tmp_path):
    file = tmp_path / "a.jsonl.gz"
    file.write_bytes(gzip.compress(b'{"text": "a"}\n'))
    assert read_table(str(file), None, "k").rows == [{"text": "a"}]


def test_parquet_rows_are_numbered_from_one(tmp_path):
    file = tmp_path / "a.parquet"
    pq.write_table(pa.table({"text": ["a", "b"], "label": [0, 1]}), file)
    table = read_table(str(file), None, "k")
    assert table.columns == ["text", "label"]
    assert table.rows == [{"text": "a", "label": 0}, {"text": "b", "label": 1}]
    assert table.where(1) == f"{file} row 2"


def test_unreadable_parquet_is_a_data_error(tmp_path):
    file = write(tmp_path / "a.parquet", "not parquet")
    with pytest.raises(DataError, match=r"k: .*a\.parquet is not a readable parquet file"):
        read_table(str(file), None, "k")


def test_nothing_usable_names_the_file_and_first_reasons(tmp_path):
    file = write(tmp_path / "a.tsv", "text\tlabel\na\nb\tc\td\n")
    with pytest.raises(DataError) as err:
        read_table(str(file), None, "tasks.x.train")
    message = str(err.value)
    assert message.startswith(f"tasks.x.train: {file} holds no usable tsv record")
    assert (
        f"{file}:2: expected 2 fields, found 1" in message
        and f"{file}:3: expected 2 fields, found 3" in message
    )
    with pytest.raises(DataError, match="holds no usable csv record$"):
        read_table(str(write(tmp_path / "header_only.csv", "text,label\n")), None, "k")


def test_relative_path_uses_data_dir_and_missing_file_names_key(tmp_path):
    write(tmp_path / "a.tsv", "text\tlabel\nx\t1\n")
    assert read_table("a.tsv", tmp_path, "k").source == str(tmp_path / "a.tsv")
    with pytest.raises(ConfigError, match="tasks.x.train: no file matches 'b.tsv'"):
        read_table("b.tsv", tmp_path, "tasks.x.train")


def fake_hub(monkeypatch) -> list:
    import datasets

    features = datasets.Features(
        {"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["negative", "positive"])}
    )
    data = datasets.Dataset.from_dict(
        {"text": ["bad", "good", "fine"], "label": [0, 1, 1]}, features=features
    )
    asked: list = []

    def load(hub):
        asked.append(hub)
        return data

    monkeypatch.setattr(readers, "load_hub_split", load)
    return asked


def test_hub_split_with_class_labels(monkeypatch):
    asked = fake_hub(monkeypatch)
    uri = "hf://owner/sentiment?split=validation"
    table = read_table(uri, None, "k", hf_config="default")
    assert (asked[0].dataset, asked[0].config, asked[0].split) == ("owner/sentiment", "default", "validation")
    assert table.source == uri
    assert table.columns == ["text", "label"]
    # ClassLabel integers are read as their names: positions in the feature's names, never in a
    # label list given in another order.
    assert table.rows[1] == {"text": "good", "label": "positive"}
    assert table.class_names == {"label": ["negative", "positive"]}
    assert table.where(2) == f"{uri} row 3"
    values = column_values(table, "label", "k")
    labels = discover_labels(values, None, "k", class_names=table.class_names["label"])
    assert labels.names == ["negative", "positive"]
    assert [labels.index_of(v, "x", "k") for v in values] == [0, 1, 1]
    swapped = discover_labels(values, ["positive", "negative"], "k")
    assert [swapped.index_of(v, "x", "k") for v in values] == [1, 0, 0]


def test_hub_class_names_that_are_digits_keep_their_classes(monkeypatch):
    """yelp_polarity's ClassLabel names are "1" and "2": value 1 is "2", never the class named "1"."""
    import datasets

    features = datasets.Features(
        {"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["1", "2"])}
    )
    data = datasets.Dataset.from_dict({"text": ["a", "b", "c"], "label": [0, 1, -1]}, features=features)
    monkeypatch.setattr(readers, "load_hub_split", lambda hub: data)
    table = read_table("hf://yelp_polarity", None, "k")
    assert [row["label"] for row in table.rows] == ["1", "2", None]  # -1: unlabelled
    labels = discover_labels(["1", "2"], None, "k", class_names=table.class_names["label"])
    assert [labels.index_of(v, "x", "k") for v in ("1", "2")] == [0, 1]


def test_hub_load_failure_is_a_data_error(monkeypatch):
    def load(hub):
        raise ValueError('Unknown split "dev"')

    monkeypatch.setattr(readers, "load_hub_split", load)
    with pytest.raises(
        DataError, match=r"k: cannot load 'hf://a/b' \(data set a/b, config None, split dev\).*Unknown"
    ):
        read_table("hf://a/b", None, "k", split="dev")


# --- columns -------------------------------------------------------------------------------------


def small_table() -> Table:
    return Table(
        "f.tsv", ["text", "label"], [{"text": "a", "label": "1"}, {"text": " ", "label": "0"}], [2, 4]
    )


def test_column_by_name_or_position():
    table = small_table()
    assert column_name(table, "label", "k") == "label"
    assert column_name(table, 0, "k") == "text"
    assert column_name(table, "1", "k") == "label"


def test_missing_column_lists_the_columns_found():
    with pytest.raises(DataError) as err:
        column_name(small_table(), "sentence", "tasks.x.text_column")
    assert (
        str(err.value) == "tasks.x.text_column: column 'sentence' not found in f.tsv (columns: text, label)"
    )
    with pytest.raises(
        DataError, match=r"column 2 is out of range for f\.tsv, which has 2 columns \(positions 0-1"
    ):
        column_name(small_table(), 2, "k")
    with pytest.raises(DataError, match="not found"):
        column_name(small_table(), True, "k")


def test_required_column_values_name_the_empty_row():
    table = small_table()
    assert column_values(table, "text", "k", required=False) == ["a", " "]
    with pytest.raises(DataError, match=r"k: column 'text' is empty at f\.tsv:4 \(found ' '\)"):
        column_values(table, "text", "k")


# --- labels --------------------------------------------------------------------------------------


def test_discover_integer_labels_in_numeric_order():
    labels = discover_labels(["10", "2", " 2 ", 1, 2.0], None, "k")
    assert labels.names == ["1", "2", "10"]
    assert [labels.index_of(v, "x", "k") for v in ["10", 2, "1", "02"]] == [2, 1, 0, 1]


def test_discover_string_labels_sorted_and_stripped():
    labels = discover_labels(["neutral ", "entailment", "contradiction", "entailment"], None, "k")
    assert labels.names == ["contradiction", "entailment", "neutral"]
    assert labels.index_of(" neutral", "x", "k") == 2


def test_bools_are_labels_not_integers():
    labels = discover_labels([True, False, True], None, "k")
    assert labels.names == ["False", "True"]
    assert labels.index_of(True, "x", "k") == 1
    with pytest.raises(DataError):
        labels.index_of(1, "x", "k")


def test_listed_names_keep_config_order():
    labels = discover_labels(["pos", "neg"], ["neg", "pos"], "k")
    assert labels.names == ["neg", "pos"]
    assert labels.index_of("pos", "x", "k") == 1


def test_listed_names_with_integer_values_map_by_index():
    labels = discover_labels([0, "1", 1.0], ["negative", "positive"], "k")
    assert labels.accepts_indices
    assert [labels.index_of(v, "x", "k") for v in [0, "1", 1.0]] == [0, 1, 1]
    with pytest.raises(
        DataError,
        match=r"label 2 at x is not in the label set \['negative', 'positive'\] \(nor a class index 0-1\)",
    ):
        labels.index_of(2, "x", "k")


def test_listed_integer_names_do_not_map_by_index():
    labels = discover_labels(["1", "2"], [1, 2], "k")
    assert labels.names == ["1", "2"]
    assert labels.index_of(1, "x", "k") == 0
    with pytest.raises(DataError):
        labels.index_of(0, "x", "k")


def test_label_not_in_set_names_value_and_where():
    with pytest.raises(DataError) as err:
        discover_labels(
            ["neg", "pos", "maybe"], ["neg", "pos"], "tasks.x.labels", wheres=["f:2", "f:3", "f:7"]
        )
    assert str(err.value) == (
        "tasks.x.labels: label 'maybe' at f:7 is not in the label set ['neg', 'pos'] (nor a class index 0-1)"
    )
    with pytest.raises(DataError) as err:
        discover_labels(["1", "3"], [1, 2], "k", wheres=["f:2", "f:3"])
    assert str(err.value) == "k: label '3' at f:3 is not in the label set ['1', '2']"
    with pytest.raises(DataError, match="-1 usually marks an unlabelled"):
        discover_labels([0, -1], ["neg", "pos"], "k", wheres=["r1", "r2"])
    with pytest.raises(DataError, match=r"k: no label at f:3 \(found None\)"):
        discover_labels(["a", None], None, "k", wheres=["f:2", "f:3"])


def test_listed_names_are_validated():
    with pytest.raises(ConfigError, match=r"repeats \['a'\]"):
        discover_labels([], ["a", "b", "a"], "k")
    with pytest.raises(ConfigError, match="has an empty name"):
        discover_labels([], ["a", " "], "k")
    with pytest.raises(ConfigError, match="is empty"):
        discover_labels([], [], "k")
    with pytest.raises(ConfigError, match="quote them"):
        discover_labels([], [True, False, True], "k")


def test_label_set_equality_ignores_lookup_cache():
    assert LabelSet(["a", "b"]) == LabelSet(["a", "b"])


# --- label files ---------------------------------------------------------------------------------


def test_read_label_file(tmp_path):
    write(tmp_path / "labels.lst", " 0\n1\r\n1\n\n")
    assert read_label_file("labels.lst", tmp_path, "k") == ["0", "1", "1"]
    write(tmp_path / "gap.lst", "0\n\n1\n")
    with pytest.raises(DataError, match=r"k: .*gap\.lst:2: blank line among the labels"):
        read_label_file("gap.lst", tmp_path, "k")
    write(tmp_path / "empty.lst", "\n")
    with pytest.raises(DataError, match="holds no labels"):
        read_label_file("empty.lst", tmp_path, "k")


def test_attach_labels_aligned_with_records(tmp_path):
    file = write(tmp_path / "a.jsonl", '{"goal": "g1", "sol1": "a"}\n{"goal": "g2", "sol1": "b"}\n')
    table = read_table(str(file), None, "k")
    labelled = attach_labels(table, ["1", "0"], "label", "k", "labels.lst")
    assert labelled.columns == ["goal", "sol1", "label"]
    assert [row["label"] for row in labelled.rows] == ["1", "0"]
    assert labelled.lines == table.lines and "label" not in table.columns
    with pytest.raises(DataError) as err:
        attach_labels(table, ["1", "0", "1"], "label", "tasks.piqa.labels", "labels.lst")
    message = str(err.value)
    assert "tasks.piqa.labels" in message and "labels.lst holds 3 labels" in message
    assert f"{file} holds 2 records" in message
    with pytest.raises(ConfigError, match="already has a column 'goal'"):
        attach_labels(table, ["1", "0"], "goal", "k", "labels.lst")


def test_attach_labels_refuses_a_table_with_skipped_records(tmp_path):
    file = write(tmp_path / "a.jsonl", '{"goal": "g1"}\nnot json\n{"goal": "g2"}\n')
    table = read_table(str(file), None, "k")
    with pytest.raises(
        DataError, match=r"cannot align the labels of labels\.lst .* 1 record\(s\) were unusable"
    ):
        attach_labels(table, ["1", "0"], "label", "k", "labels.lst")


# --- dev carving ---------------------------------------------------------------------------------


def test_carve_split_is_seeded_disjoint_and_complete():
    train, dev = carve_split(100, 0.1, seed=3)
    assert len(dev) == 10 and len(train) == 90
    assert sorted(train + dev) == list(range(100))
    assert train == sorted(train) and dev == sorted(dev)
    assert carve_split(100, 0.1, seed=3) == (train, dev)
    assert carve_split(100, 0.1, seed=4) != (train, dev)
    # Pinned: the same seed must give the same split on every machine and Python version.
    assert carve_split(10, 0.3, seed=0)[1] == [1, 7, 8]


def test_carve_split_sizes_and_bad_inputs():
    assert len(carve_split(2, 0.01, 0)[1]) == 1
    assert len(carve_split(3, 0.99, 0)[0]) == 1
    with pytest.raises(ConfigError, match="between 0 and 1"):
        carve_split(10, 1.0, 0)
    with pytest.raises(ConfigError):
        carve_split(10, 0.0, 0)
    with pytest.raises(DataError, match="at least 2"):
        carve_split(1, 0.5, 0)


# --- real data (optional) ------------------------------------------------------------------------


@pytest.mark.skipif(not os.environ.get("LMFORGE_DATA_DIR"), reason="LMFORGE_DATA_DIR is not set")
def test_shared_samples_read():
    data_dir = Path(os.environ["LMFORGE_DATA_DIR"])
    if not (data_dir / "sst2" / "dev.tsv").is_file() or not (data_dir / "piqa" / "valid.jsonl").is_file():
        pytest.skip("sst2/dev.tsv or piqa/valid.jsonl not under LMFORGE_DATA_DIR")
    sst2 = read_table("sst2/dev.tsv", data_dir, "sst2")
    assert sst2.columns == ["sentence", "label"] and not sst2.skipped
    wheres = [sst2.where(i) for i in range(len(sst2.rows))]
    labels = discover_labels(column_values(sst2, "label", "sst2"), None, "sst2", wheres=wheres)
    assert labels.names == ["0", "1"]
    piqa = read_table("piqa/valid.jsonl", data_dir, "piqa")
    labelled = attach_labels(
        piqa, read_label_file("piqa/valid-labels.lst", data_dir, "piqa"), "label", "piqa", "lst"
    )
    assert labelled.columns == ["goal", "sol1", "sol2", "label"]
    assert json.loads(json.dumps(labelled.rows[0]))["label"] in ("0", "1")
