"""MinHash near-dedup: signatures against exact Jaccard, LSH pairing, clusters, determinism, config."""

from __future__ import annotations

import math
import random
import string
from collections import Counter

import numpy as np
import pytest

from lmforge.core.configbase import validate_config
from lmforge.core.errors import ConfigError
from lmforge.corpus.config import CorpusConfig, NearDedupConfig
from lmforge.corpus.minhash import (
    MERSENNE_PRIME,
    MinHasher,
    band_keys,
    clusters,
    jaccard,
    pairs_in_groups,
    shingle_hashes,
    simplify,
)
from lmforge.corpus.near_dedup import near_duplicates

# Letters only: simplify() turns every digit run into 0.
_LETTERS = random.Random(0)
VOCABULARY = ["".join(_LETTERS.choices(string.ascii_lowercase, k=7)) for _ in range(20000)]


def random_text(rng: random.Random, num_words: int = 120) -> str:
    return " ".join(rng.choice(VOCABULARY) for _ in range(num_words))


def edited(rng: random.Random, text: str, fraction: float) -> str:
    words = text.split()
    for _ in range(round(fraction * len(words))):
        words[rng.randrange(len(words))] = rng.choice(VOCABULARY)
    return " ".join(words)


def planted_corpus(seed: int = 0) -> tuple[list[str], list[set[int]]]:
    """60 unrelated documents plus clusters of 1%-edited copies; returns texts and clusters."""
    rng = random.Random(seed)
    texts = [random_text(rng) for _ in range(60)]
    planted = []
    for original, copies in [(3, 1), (10, 2), (25, 3), (40, 1)]:
        members = {original}
        for _ in range(copies):
            members.add(len(texts))
            texts.append(edited(rng, texts[original], 0.01))
        planted.append(members)
    return texts, planted


@pytest.mark.unit
def test_permutation_is_exact_modular_arithmetic():
    hasher = MinHasher(16, seed=3)
    rng = np.random.default_rng(0)
    edge_cases = [0, 1, MERSENNE_PRIME - 1, MERSENNE_PRIME, MERSENNE_PRIME + 6, 2**64 - 1]
    hashes = np.r_[np.array(edge_cases, dtype=np.uint64), rng.integers(0, 2**64 - 1, 200, dtype=np.uint64)]
    a = [int(high) * 2**31 + int(low) for high, low in zip(hasher.a_high, hasher.a_low, strict=True)]
    b = [int(value) for value in hasher.b]
    expected = [
        [(ak * (x % MERSENNE_PRIME) + bk) % MERSENNE_PRIME for ak, bk in zip(a, b, strict=True)]
        for x in hashes.tolist()
    ]
    assert hasher.permuted(hashes).tolist() == expected


@pytest.mark.unit
def test_signature_is_the_minimum_whatever_the_batching():
    rng = random.Random(1)
    shingles = [shingle_hashes(random_text(rng, length), "word", 5) for length in (3, 700, 1, 2500, 40)]
    signatures = MinHasher(32, seed=1).signatures(shingles)
    for row, hashes in zip(signatures, shingles, strict=True):
        assert row.tolist() == MinHasher(32, seed=1).permuted(hashes).min(axis=0).tolist()
    assert MinHasher(32, seed=1).signatures([np.zeros(0, np.uint64)]).tolist() == [[MERSENNE_PRIME] * 32]


@pytest.mark.unit
@pytest.mark.parametrize("similarity", [0.2, 0.5, 0.8])
def test_signature_agreement_estimates_jaccard(similarity):
    """The fraction of equal signature values is an unbiased estimate of Jaccard with standard
    deviation sqrt(J (1 - J) / num_perm); each pair within 4.5 sigma, their mean within 4 sigma / sqrt(n)."""
    num_perm, num_pairs, union = 128, 40, 400
    rng = random.Random(7)
    hasher = MinHasher(num_perm, seed=11)
    errors = []
    for _ in range(num_pairs):
        tokens = ["".join(rng.choices(string.ascii_lowercase, k=10)) for _ in range(union)]
        shared = round(similarity * union)
        only_first = (union - shared) // 2
        first = " ".join(tokens[: shared + only_first])
        second = " ".join(tokens[:shared] + tokens[shared + only_first :])
        hashes = [shingle_hashes(first, "word", 1), shingle_hashes(second, "word", 1)]
        exact = jaccard(*hashes)
        estimate = float(np.mean(np.equal(*hasher.signatures(hashes))))
        sigma = math.sqrt(exact * (1 - exact) / num_perm)
        assert abs(estimate - exact) <= 4.5 * sigma, (estimate, exact)
        errors.append(estimate - exact)
    assert abs(np.mean(errors)) <= 4 * math.sqrt(similarity * (1 - similarity) / num_perm) / math.sqrt(
        num_pairs
    )


@pytest.mark.unit
def test_simplify_ignores_case_punctuation_accents_digits_and_spacing():
    assert simplify("Héllo,  WORLD!\n It's 1984 -- “ok”") == "hello world its 0 ok"
    assert simplify("hello world its 7 ok") == "hello world its 0 ok"
    assert simplify(" ...!? ") == ""


@pytest.mark.unit
@pytest.mark.parametrize("unit", ["word", "char"])
def test_identical_documents_always_pair_and_disjoint_never(unit):
    config = NearDedupConfig(shingle_unit=unit)
    hasher = MinHasher(config.num_perm, config.seed)
    rng = random.Random(2)
    texts = [random_text(rng) for _ in range(30)]
    copies = [text.upper().replace(" ", " ,  ") for text in texts]
    keys = band_keys(hasher.signatures([shingle_hashes(t, unit, 5) for t in texts + copies]), 14, 8)
    assert (keys[:30] == keys[30:]).all()
    # Disjoint vocabularies: no band key in common between any two of the first 30 documents.
    disjoint = [" ".join(VOCABULARY[doc * 80 + word] for word in range(80)) for doc in range(30)]
    keys = band_keys(hasher.signatures([shingle_hashes(t, unit, 5) for t in disjoint]), 14, 8)
    for band in range(14):
        assert len(set(keys[:, band].tolist())) == 30


@pytest.mark.unit
def test_pairs_in_groups_links_each_group_to_its_smallest_document():
    keys = np.array([5, 5, 5, 7, 9, 9], dtype=np.uint64)
    docs = np.array([2, 4, 8, 1, 3, 6], dtype=np.int64)
    assert pairs_in_groups(keys, docs).tolist() == [[2, 4], [2, 8], [3, 6]]
    assert pairs_in_groups(keys[:1], docs[:1]).shape == (0, 2)


@pytest.mark.unit
def test_clusters_are_connected_components_kept_by_smallest_key():
    rng = random.Random(4)
    edges = np.array([[rng.randrange(200), rng.randrange(200)] for _ in range(150)], dtype=np.int64)
    drop, histogram = clusters(edges)
    # Reference: components by repeated relaxation to the smallest reachable key.
    label = {node: node for node in edges.ravel().tolist()}
    changed = True
    while changed:
        changed = False
        for first, second in edges.tolist():
            low = min(label[first], label[second])
            if label[first] != low or label[second] != low:
                label[first] = label[second] = low
                changed = True
    assert drop.tolist() == sorted(node for node, root in label.items() if node != root)
    assert histogram == dict(sorted(Counter(Counter(label.values()).values()).items()))


@pytest.mark.unit
def test_planted_clusters_found_with_histogram(tmp_path):
    texts, planted = planted_corpus()
    result = near_duplicates([(list(range(len(texts))), texts)], NearDedupConfig(), tmp_path, parallel=False)
    expected_drop = sorted(key for members in planted for key in members if key != min(members))
    assert result.drop_keys.tolist() == expected_drop
    num_in_clusters = sum(len(members) for members in planted)
    assert result.stats["cluster_size_histogram"] == {
        "1": len(texts) - num_in_clusters,
        "2": 2,
        "3": 1,
        "4": 1,
    }
    assert result.stats["num_dropped"] == len(expected_drop) == 7


@pytest.mark.unit
def test_drop_set_independent_of_chunking_order_and_memory_bound(tmp_path):
    texts, planted = planted_corpus(seed=5)
    keys = list(range(len(texts)))
    one = near_duplicates([(keys, texts)], NearDedupConfig(), tmp_path / "one", parallel=False)
    # Three chunks, documents shuffled across them, and a memory bound that forces range splits.
    order = list(range(len(texts)))
    random.Random(9).shuffle(order)
    chunks = [
        ([keys[i] for i in part], [texts[i] for i in part]) for part in (order[:20], order[20:50], order[50:])
    ]
    tight = NearDedupConfig(max_records_in_memory=7)
    three = near_duplicates(chunks, tight, tmp_path / "three", parallel=False)
    assert three.drop_keys.tolist() == one.drop_keys.tolist()
    assert three.stats == one.stats
    kept = set(keys) - set(one.drop_keys.tolist())
    assert all(min(members) in kept for members in planted)


@pytest.mark.unit
def test_documents_without_words_are_counted_not_clustered(tmp_path):
    texts = ["", "!!! ...", "", "a b c d e f"]
    result = near_duplicates([(range(4), texts)], NearDedupConfig(), tmp_path, parallel=False)
    assert result.drop_keys.tolist() == []
    assert result.stats["num_without_shingles"] == 3
    with pytest.raises(ValueError, match="non-negative integer key per text"):
        near_duplicates([([-1], ["x"])], NearDedupConfig(), tmp_path / "bad", parallel=False)


@pytest.mark.unit
def test_config_validation_messages():
    with pytest.raises(ConfigError, match=r"bands x rows must equal num_perm: 10 x 8 = 80, num_perm is 112"):
        validate_config(NearDedupConfig, {"bands": 10})
    with pytest.raises(ConfigError, match=r"unknown key 'num_perms'; did you mean 'num_perm'\?"):
        validate_config(NearDedupConfig, {"num_perms": 128})
    with pytest.raises(ConfigError, match=r"near_dedup.shingle_unit"):
        validate_config(
            CorpusConfig, {"sources": [{"path": "a.txt"}], "near_dedup": {"shingle_unit": "line"}}
        )
    config = validate_config(CorpusConfig, {"sources": [{"path": "a.txt"}], "near_dedup": {}})
    assert config.near_dedup == NearDedupConfig(num_perm=112, bands=14, rows=8, shingle_size=5)
    assert validate_config(CorpusConfig, {"sources": [{"path": "a.txt"}]}).near_dedup is None


@pytest.mark.integration
def test_ray_phases_match_in_process_for_any_number_of_chunks(ray_runtime, tmp_path):
    texts, _ = planted_corpus(seed=8)
    keys = list(range(len(texts)))
    serial = near_duplicates([(keys, texts)], NearDedupConfig(), tmp_path / "serial", parallel=False)
    chunks = [(keys[start::3], texts[start::3]) for start in range(3)]
    config = NearDedupConfig(max_records_in_memory=10)
    distributed = near_duplicates(chunks, config, tmp_path / "ray")
    assert distributed.drop_keys.tolist() == serial.drop_keys.tolist()
    assert distributed.stats == serial.stats
    assert len(serial.drop_keys) == 7
