"""Tokenizer training: byte-identical output across runs and processes, AutoTokenizer round trips."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lmforge.core.errors import DataError
from lmforge.tokenization import TokenizerConfig, load_tokenizer_meta, train_tokenizer
from lmforge.tokenization.canonical import (
    canonical_unigram_pieces,
    canonical_wordpiece_vocab,
    wordpiece_tokens_from_marked_bpe,
)
from tests.unit.test_tokenization_helpers import enwiki_docs, write_corpus

REPO_ROOT = Path(__file__).resolve().parents[2]
SENTENCE = "The school opened in August 2016 and is the fourth in the family of schools in the region."


@pytest.fixture(scope="module")
def corpus_dir(shared_data_dir, tmp_path_factory):
    """About 1 MB of real Wikipedia articles in the cleaned-corpus layout, over several part files."""
    docs = enwiki_docs(shared_data_dir, max_chars=1_000_000)
    return write_corpus(tmp_path_factory.mktemp("corpus"), docs, rows_per_file=250)


def digests(directory: Path) -> dict[str, str]:
    return {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in sorted(directory.iterdir())}


def train_in_subprocess(config: TokenizerConfig, corpus_dir: Path, output_dir: Path) -> None:
    """Train in a fresh interpreter: hash-map seeds differ per process, so this exposes nondeterminism."""
    script = (
        "import json, sys; from pathlib import Path; "
        "from tokenization import TokenizerConfig, train_tokenizer; "
        "train_tokenizer(TokenizerConfig(**json.loads(sys.argv[1])), Path(sys.argv[2]), Path(sys.argv[3]))"
    )
    subprocess.run(
        [sys.executable, "-c", script, config.model_dump_json(), str(corpus_dir), str(output_dir)],
        check=True,
        cwd=REPO_ROOT,
        capture_output=True,
        timeout=300,
    )


@pytest.mark.unit
@pytest.mark.parametrize("algorithm", ["bpe", "wordpiece"])
def test_training_twice_gives_identical_files(algorithm, corpus_dir, tmp_path):
    config = TokenizerConfig(algorithm=algorithm, vocab_size=2000)
    first = train_tokenizer(config, corpus_dir, tmp_path / "first")
    train_tokenizer(config, corpus_dir, tmp_path / "second")
    assert digests(tmp_path / "first") == digests(tmp_path / "second")
    assert set(digests(tmp_path / "first")) == {
        "tokenizer.json",
        "tokenizer_config.json",
        "lmforge_tokenizer.json",
    }
    assert first["vocab_size"] == 2000
    assert first["algorithm"] == algorithm


@pytest.mark.integration
@pytest.mark.parametrize(("algorithm", "max_documents"), [("wordpiece", None), ("unigram", 300)])
def test_training_in_a_fresh_process_gives_identical_files(algorithm, max_documents, corpus_dir, tmp_path):
    # The upstream WordPiece and Unigram trainers differ between processes (ids, scores).
    config = TokenizerConfig(algorithm=algorithm, vocab_size=2000, max_training_documents=max_documents)
    train_tokenizer(config, corpus_dir, tmp_path / "here")
    train_in_subprocess(config, corpus_dir, tmp_path / "there")
    assert digests(tmp_path / "here") == digests(tmp_path / "there")


@pytest.mark.unit
@pytest.mark.parametrize("algorithm", ["bpe", "wordpiece", "unigram"])
def test_auto_tokenizer_round_trip(algorithm, corpus_dir, tmp_path):
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    config = TokenizerConfig(algorithm=algorithm, vocab_size=1000, max_training_documents=300)
    result = train_tokenizer(config, corpus_dir, tmp_path)
    meta = load_tokenizer_meta(tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)

    assert result["num_training_documents"] == meta["num_training_documents"] == 300
    assert len(tokenizer) == meta["vocab_size"] == result["vocab_size"] <= 1000
    assert tokenizer.pad_token is not None
    for role, token in meta["special_tokens"].items():
        assert getattr(tokenizer, f"{role}_token") == token
        assert getattr(tokenizer, f"{role}_token_id") == meta["special_ids"][role]
    assert meta["tokenizer_sha256"] == hashlib.sha256((tmp_path / "tokenizer.json").read_bytes()).hexdigest()

    ids = tokenizer(SENTENCE, add_special_tokens=False)["input_ids"]
    assert meta["special_ids"]["unk"] not in ids
    decoded = tokenizer.decode(ids)
    if algorithm == "wordpiece":  # lowercased, punctuation split off
        assert decoded.replace(" ", "") == SENTENCE.lower().replace(" ", "")
    else:
        assert decoded == SENTENCE
    # The shard stage's Ray workers encode with the raw tokenizer.json: it must agree.
    assert (
        Tokenizer.from_file(str(tmp_path / "tokenizer.json")).encode(SENTENCE, add_special_tokens=False).ids
        == ids
    )

    with_specials = tokenizer(SENTENCE)["input_ids"]
    if algorithm == "wordpiece":
        assert with_specials == [meta["special_ids"]["cls"], *ids, meta["special_ids"]["sep"]]
    elif algorithm == "unigram":  # T5's tokenizer: </s> after every text, 100 sentinels
        assert with_specials == [*ids, meta["special_ids"]["eos"]]
        sentinels = [f"<extra_id_{index}>" for index in range(100)]
        assert tokenizer.convert_tokens_to_ids(sentinels) == meta["sentinel_ids"]
        assert set(sentinels) <= set(tokenizer.all_special_tokens)
        filled = tokenizer("a <extra_id_0> b <extra_id_99>", add_special_tokens=False)["input_ids"]
        assert meta["sentinel_ids"][0] in filled and meta["sentinel_ids"][99] in filled
    else:
        assert with_specials == ids
        assert meta["sentinel_ids"] == []
    padded = tokenizer([SENTENCE, "Short."], padding=True)["input_ids"]
    assert padded[1][-1] == meta["special_ids"]["pad"]


@pytest.mark.unit
def test_wordpiece_special_ids_are_fixed(corpus_dir, tmp_path):
    train_tokenizer(TokenizerConfig(algorithm="wordpiece", vocab_size=500), corpus_dir, tmp_path)
    meta = load_tokenizer_meta(tmp_path)
    assert meta["special_ids"] == {"pad": 0, "unk": 1, "cls": 2, "sep": 3, "mask": 4}
    assert meta["lowercase"] is True
    vocab = json.loads((tmp_path / "tokenizer.json").read_text())["model"]["vocab"]
    rest = sorted(vocab, key=vocab.get)[5:]
    assert rest == sorted(rest)


@pytest.mark.unit
def test_canonical_wordpiece_vocab_ignores_input_order():
    specials = ["[PAD]", "[UNK]"]
    first = canonical_wordpiece_vocab(["b", "##a", "[UNK]", "a", "[PAD]"], specials)
    second = canonical_wordpiece_vocab(["[PAD]", "a", "b", "[UNK]", "##a"], specials)
    assert first == second == {"[PAD]": 0, "[UNK]": 1, "##a": 2, "a": 3, "b": 4}


@pytest.mark.unit
def test_wordpiece_tokens_from_marked_bpe():
    marker = "\u2581"
    # BPE ids: alphabet first, then merges in the order they were learned.
    bpe = {"a": 0, "b": 1, "c": 2, marker: 3, marker + "a": 4, "bc": 5, marker + "ab": 6, "abc": 7}
    alphabet = {"a", "b", "c", marker, "##a", "##b", "##c", "##" + marker}
    assert wordpiece_tokens_from_marked_bpe(bpe, 100, marker) == alphabet | {"##bc", "ab", "##abc"}
    # "<marker>a" maps onto the alphabet's "a" and costs nothing; the cut follows merge order.
    assert wordpiece_tokens_from_marked_bpe(bpe, 9, marker) == alphabet | {"##bc"}
    assert wordpiece_tokens_from_marked_bpe(bpe, 4, marker) == alphabet


@pytest.mark.unit
def test_canonical_unigram_pieces_undoes_the_trainers_arbitrary_order():
    floor = -12.0
    model = [("<unk>", 0.0), ("the", -3.0), ("ab", floor), ("x", floor), ("y", floor + 1e-15)]
    # The trainer deals floor, floor + 1e-4, floor + 2e-4, ... to unseen characters in hash order.
    penalties = [0.0, 0.0001, 0.0001 + 0.0001, 0.0001 + 0.0001 + 0.0001]

    def trained(order):
        return model + [(char, floor + penalty) for char, penalty in zip(order, penalties, strict=True)]

    first = canonical_unigram_pieces(trained("qrst"), ["<unk>"])
    second = canonical_unigram_pieces(trained("tsrq"), ["<unk>"])
    assert first == second
    # The re-dealt group is every single character on the floor plus the penalty block, in sorted order.
    assert first == [
        ("<unk>", 0.0),
        ("the", -3.0),
        ("q", -11.9997),
        ("r", -11.9998),
        ("s", -11.9999),
        ("ab", -12.0),
        ("t", -12.0),
        ("x", -12.0),
        ("y", -12.0),
    ]


@pytest.mark.unit
def test_missing_or_malformed_corpus_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="holds no part-"):
        train_tokenizer(TokenizerConfig(), tmp_path, tmp_path / "out")
    pq.write_table(pa.table({"doc_id": ["a"], "body": ["x"]}), tmp_path / "part-00000.parquet")
    with pytest.raises(DataError, match=r"part-00000.parquet lacks column\(s\) \['text'\]"):
        train_tokenizer(TokenizerConfig(), tmp_path, tmp_path / "out")
