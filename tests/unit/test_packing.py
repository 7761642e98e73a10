"""Packing, document splitting and shard writing on synthetic token lists."""

from __future__ import annotations

import numpy as np
import pytest

from lmforge.core.errors import ArtifactError, ConfigError
from lmforge.tokenization.packing import PACKINGS, CausalPacker, MaskedPacker, PairPacker, SpanPacker
from lmforge.tokenization.shard_writer import SplitWriter, read_sequences, write_sequences
from lmforge.tokenization.split import TRAIN, VALIDATION, split_of

EOS, CLS, SEP = 0, 2, 3
SPECIALS = {"eos": EOS, "cls": CLS, "sep": SEP, "pad": 1}


def synthetic_documents(num_documents: int, seed: int = 0) -> list[list[int]]:
    """Documents of varied length (0 to 300 tokens) whose ids never collide with the specials."""
    rng = np.random.default_rng(seed)
    return [list(rng.integers(10, 1000, size=int(rng.integers(1, 300)))) for _ in range(num_documents)]


def pack_all(packer, documents):
    chunks = [packer.add_document(document) for document in documents]
    packer.finish()
    return np.concatenate(chunks) if chunks else np.empty((0, packer.seq_len), dtype=np.int32)


@pytest.mark.unit
def test_registry_names_every_packing():
    assert PACKINGS.names() == ["clm", "mlm", "pair", "span"]
    with pytest.raises(ConfigError, match="did you mean 'clm'"):
        PACKINGS.get("clmm")


@pytest.mark.unit
@pytest.mark.parametrize("seq_len", [8, 37, 128])
def test_clm_is_the_eos_joined_stream_cut_into_windows(seq_len):
    documents = synthetic_documents(40)
    packer = CausalPacker(seq_len, SPECIALS)
    sequences = pack_all(packer, documents)

    # Reference built independently with plain lists.
    stream = [token for document in documents for token in [*document, EOS]]
    num_windows = len(stream) // seq_len
    expected = [stream[i * seq_len : (i + 1) * seq_len] for i in range(num_windows)]
    assert sequences.dtype == np.int32
    assert sequences.shape == (num_windows, seq_len)
    assert sequences.tolist() == expected

    stats = packer.stats()
    document_tokens = sum(len(document) for document in documents)
    assert stats["num_document_tokens"] == document_tokens
    assert stats["num_separator_tokens"] == len(documents)
    assert stats["num_dropped_tail_tokens"] == len(stream) - num_windows * seq_len
    assert stats["num_dropped_tail_tokens"] < seq_len
    assert document_tokens + len(documents) - stats["num_dropped_tail_tokens"] == stats["num_tokens"]
    assert stats["num_tokens"] == sequences.size
    assert int((sequences == EOS).sum()) == len(documents) - stream[num_windows * seq_len :].count(EOS)


@pytest.mark.unit
@pytest.mark.parametrize("seq_len", [8, 64, 130])
def test_mlm_wraps_sep_joined_chunks_in_cls_sep(seq_len):
    documents = synthetic_documents(40, seed=1)
    packer = MaskedPacker(seq_len, SPECIALS)
    sequences = pack_all(packer, documents)

    stream = list(documents[0])
    for document in documents[1:]:
        stream += [SEP, *document]
    chunk = seq_len - 2
    num_chunks = len(stream) // chunk
    expected = [[CLS, *stream[i * chunk : (i + 1) * chunk], SEP] for i in range(num_chunks)]
    assert sequences.shape == (num_chunks, seq_len)
    assert sequences.tolist() == expected
    assert (sequences[:, 0] == CLS).all() and (sequences[:, -1] == SEP).all()

    stats = packer.stats()
    document_tokens = sum(len(document) for document in documents)
    assert stats["num_separator_tokens"] == len(documents) - 1
    assert stats["num_dropped_tail_tokens"] == len(stream) - num_chunks * chunk
    wrappers = 2 * stats["num_sequences"]
    assert (
        document_tokens + stats["num_separator_tokens"] - stats["num_dropped_tail_tokens"] + wrappers
        == stats["num_tokens"]
        == sequences.size
    )


@pytest.mark.unit
def test_a_document_longer_than_many_windows_is_cut_without_loss():
    packer = CausalPacker(8, SPECIALS)
    sequences = packer.add_document(list(range(10, 10 + 8 * 5)))  # 40 tokens + EOS
    assert sequences.shape == (5, 8)
    assert sequences.reshape(-1).tolist() == list(range(10, 50))
    assert packer.finish() == 1  # only the EOS is left over


@pytest.mark.unit
def test_packing_needs_its_special_tokens():
    with pytest.raises(ValueError, match="eos"):
        CausalPacker(16, {"cls": CLS, "sep": SEP})
    with pytest.raises(ValueError, match="cls"):
        MaskedPacker(16, {"eos": EOS})


@pytest.mark.unit
def test_split_of_is_a_stable_function_of_seed_and_doc_id():
    doc_ids = [f"doc-{index}" for index in range(20_000)]
    first = [split_of(doc_id, 0.1, seed=7) for doc_id in doc_ids]
    assert first == [split_of(doc_id, 0.1, seed=7) for doc_id in doc_ids]
    # Binomial(20000, 0.1): sd 42 documents, so 1700..2300 is a +-7 sd band.
    assert 1700 < first.count(VALIDATION) < 2300
    other_seed = [split_of(doc_id, 0.1, seed=8) for doc_id in doc_ids]
    assert other_seed != first
    # A larger fraction only moves documents into validation, never out of it.
    larger = [split_of(doc_id, 0.2, seed=7) for doc_id in doc_ids]
    assert all(big == VALIDATION for small, big in zip(first, larger, strict=True) if small == VALIDATION)
    assert set(first) == {TRAIN, VALIDATION}


@pytest.mark.unit
def test_split_writer_rolls_shards_and_round_trips(tmp_path):
    documents = synthetic_documents(60, seed=2)
    writer = SplitWriter(TRAIN, CausalPacker(16, SPECIALS), tmp_path, sequences_per_shard=100)
    for index, document in enumerate(documents):
        writer.add_document(f"d{index}", np.asarray(document, dtype=np.int32))
    writer.add_document("empty", np.empty(0, dtype=np.int32))
    totals = writer.finish()

    reference = pack_all(CausalPacker(16, SPECIALS), documents)
    assert totals["num_sequences"] == len(reference)
    assert totals["num_empty_documents"] == 1
    assert totals["num_documents"] == len(documents)
    assert [shard["num_sequences"] for shard in writer.shards[:-1]] == [100] * (len(writer.shards) - 1)
    assert 0 < writer.shards[-1]["num_sequences"] <= 100
    assert [shard["path"] for shard in writer.shards] == [
        f"train-{i:05d}.parquet" for i in range(len(writer.shards))
    ]
    read_back = np.concatenate([read_sequences(tmp_path / shard["path"], 16) for shard in writer.shards])
    assert read_back.dtype == np.int32
    np.testing.assert_array_equal(read_back, reference)


@pytest.mark.unit
def test_shard_schema_is_list_of_int32_and_wrong_lengths_are_caught(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "train-00000.parquet"
    write_sequences(np.arange(24, dtype=np.int32).reshape(3, 8), path)
    assert pq.read_schema(path).field("input_ids").type == pa.list_(pa.int32())
    with pytest.raises(ArtifactError, match="seq_len=6"):
        read_sequences(path, 6)


@pytest.mark.unit
def test_span_packing_stores_raw_windows_of_the_eos_joined_stream():
    documents = synthetic_documents(40)
    packer = SpanPacker(64, SPECIALS, raw_length=71, target_length=17)
    sequences = pack_all(packer, documents)
    stream = [token for document in documents for token in [*document, EOS]]
    assert packer.seq_len == 71 and packer.input_length == 64 and packer.target_length == 17
    assert sequences.tolist() == [stream[i * 71 : (i + 1) * 71] for i in range(len(stream) // 71)]
    with pytest.raises(TypeError):
        SpanPacker(64, SPECIALS)  # the objective must say how long the raw windows are


@pytest.mark.unit
@pytest.mark.parametrize("seq_len", [8, 64])
def test_pair_packing_keeps_chunks_inside_one_document_and_pads_the_last(seq_len):
    documents = synthetic_documents(60, seed=3)
    packer = PairPacker(seq_len, SPECIALS)
    sequences = pack_all(packer, documents)
    chunk = seq_len - 3  # room for [CLS] A [SEP] B [SEP]
    expected, padding, dropped = [], 0, 0
    for document in documents:
        pieces = [document[i : i + chunk] for i in range(0, len(document), chunk)]
        if len(pieces[-1]) < 2:  # a segment pair needs two tokens
            dropped += len(pieces.pop())
        for piece in pieces:
            padding += chunk - len(piece)
            expected.append(piece + [SPECIALS["pad"]] * (chunk - len(piece)))
    assert packer.seq_len == chunk and packer.input_length == seq_len
    assert sequences.tolist() == expected
    stats = packer.stats()
    assert stats["num_padding_tokens"] == padding and stats["num_dropped_tail_tokens"] == dropped
    assert stats["num_sequences"] == len(expected)


@pytest.mark.unit
def test_packings_without_options_refuse_them():
    with pytest.raises(ValueError, match="takes no packing options"):
        CausalPacker(16, SPECIALS, raw_length=3)
