"""MinHash signatures, LSH band keys and duplicate clusters: the in-process core of near-dedup.

Text is simplified as datatrove's `simplify_text` does by default (lowercase, digit runs to "0",
punctuation removed, accents stripped, whitespace collapsed) so that formatting alone never makes two
copies differ. Shingles (word or character n-grams) are hashed to 64 bits; permutation k maps a hash x
to (a_k * x + b_k) mod (2^61 - 1), computed exactly (datasketch's legacy scheme lets a_k * x wrap
at 2^64 and truncates to 32 bits). Everything here is a pure function of its inputs: no Ray, no files.
"""

from __future__ import annotations

import re
import sys
import unicodedata
from collections import Counter
from collections.abc import Sequence
from functools import cache
from typing import Literal

import numpy as np
import xxhash

MERSENNE_PRIME = (1 << 61) - 1
_P = np.uint64(MERSENNE_PRIME)
_LOW31 = np.uint64((1 << 31) - 1)
_LOW30 = np.uint64((1 << 30) - 1)
_ONE, _SHIFT30, _SHIFT31, _SHIFT61 = np.uint64(1), np.uint64(30), np.uint64(31), np.uint64(61)
# Odd multipliers that make an n-gram's hash depend on word order (and a band key on row order).
_POSITION_MULTIPLIERS = np.array(
    [xxhash.xxh3_64_intdigest(f"lmforge-position-{index}".encode()) | 1 for index in range(64)],
    dtype=np.uint64,
)
_DIGITS = re.compile(r"\d+")
# Shingle rows per numpy block: keeps the three (rows x num_perm) buffers near the L2 cache size.
BLOCK_ROWS = 512


@cache
def _deletion_table() -> dict[int, None]:
    # Punctuation (Unicode P*), the ASCII symbols datatrove also strips, and combining marks (left
    # by NFD: deleting them strips accents).
    deleted = {
        code
        for code in range(sys.maxunicode + 1)
        if unicodedata.category(chr(code))[0] == "P" or unicodedata.category(chr(code)) == "Mn"
    }
    return dict.fromkeys(deleted | {ord(char) for char in "$+<=>^`|~"})


def simplify(text: str) -> str:
    """Text as shingled: lowercase, accents and punctuation removed, digit runs as 0, single spaces."""
    text = unicodedata.normalize("NFD", text.lower())
    text = _DIGITS.sub("0", text).translate(_deletion_table())
    return " ".join(text.split())


def _fmix64(values: np.ndarray) -> np.ndarray:
    """MurmurHash3's 64-bit finalizer: a bijection that spreads every input bit over the output."""
    values = values ^ (values >> np.uint64(33))
    values = values * np.uint64(0xFF51AFD7ED558CCD)
    values = values ^ (values >> np.uint64(33))
    values = values * np.uint64(0xC4CEB9FE1A85EC53)
    return values ^ (values >> np.uint64(33))


def _ngram_hashes(units: np.ndarray, size: int) -> np.ndarray:
    """64-bit hashes of every run of `size` consecutive unit hashes (the whole run when shorter)."""
    size = min(size, len(units))
    count = len(units) - size + 1
    combined = np.zeros(count, dtype=np.uint64)
    for offset in range(size):
        combined += units[offset : offset + count] * _POSITION_MULTIPLIERS[offset % 64]
    return _fmix64(combined)


def shingle_hashes(text: str, unit: Literal["word", "char"], size: int) -> np.ndarray:
    """The 64-bit hashes of the shingles of `simplify(text)`; empty when it has no words."""
    simple = simplify(text)
    if not simple:
        return np.zeros(0, dtype=np.uint64)
    if unit == "word":
        words = simple.encode("utf-8").split(b" ")
        units = np.fromiter(map(xxhash.xxh3_64_intdigest, words), dtype=np.uint64, count=len(words))
    else:
        code_points = np.frombuffer(simple.encode("utf-32-le"), dtype="<u4").astype(np.uint64)
        units = _fmix64(code_points + np.uint64(0x9E3779B97F4A7C15))
    return _ngram_hashes(units, size)


class MinHasher:
    """`num_perm` seeded permutations x -> (a x + b) mod (2^61 - 1); signatures of many documents at once."""

    def __init__(self, num_perm: int, seed: int) -> None:
        rng = np.random.default_rng(seed)
        a = rng.integers(1, MERSENNE_PRIME, size=num_perm, dtype=np.uint64)
        self.a_low, self.a_high = a & _LOW31, a >> _SHIFT31
        self.a_high_twice = self.a_high << _ONE
        self.b = rng.integers(0, MERSENNE_PRIME, size=num_perm, dtype=np.uint64)
        self.num_perm = num_perm

    def permuted(self, hashes: np.ndarray) -> np.ndarray:
        """(len(hashes), num_perm) values (a_k x + b_k) mod p of x = hash mod p, exactly in uint64.

        With x = x1 2^31 + x0 and a = a1 2^31 + a0 (x1, a1 < 2^30; x0, a0 < 2^31) and 2^61 = 1 mod p,
        a x = 2 a1 x1 + (a1 x0 + a0 x1) 2^31 + a0 x0, and the middle term's bits above 2^30 wrap to the
        bottom; every partial sum stays below 2^64. Computed in place: numpy temporaries of this size
        cost more than the arithmetic.
        """
        x = (hashes & _P) + (hashes >> _SHIFT61)
        x = ((x + ((x + _ONE) >> _SHIFT61)) & _P)[:, None]  # canonical: x <= p + 7 < 2p
        x_low, x_high = x & _LOW31, x >> _SHIFT31
        total = np.multiply(x_high, self.a_high_twice)
        middle = np.multiply(x_low, self.a_high)
        scratch = np.multiply(x_high, self.a_low)
        middle += scratch
        np.right_shift(middle, _SHIFT30, out=scratch)
        total += scratch
        middle &= _LOW30
        middle <<= _SHIFT31
        total += middle
        np.multiply(x_low, self.a_low, out=scratch)
        total += scratch
        total += self.b
        np.right_shift(total, _SHIFT61, out=scratch)
        total &= _P
        total += scratch
        np.add(total, _ONE, out=scratch)  # canonical again: total <= p + 5 < 2p
        scratch >>= _SHIFT61
        total += scratch
        total &= _P
        return total

    def signatures(self, shingles: Sequence[np.ndarray]) -> np.ndarray:
        """(len(shingles), num_perm) minima; a document without shingles gets all p (matching nothing real)."""
        result = np.full((len(shingles), self.num_perm), MERSENNE_PRIME, dtype=np.uint64)
        lengths = np.array([len(hashes) for hashes in shingles], dtype=np.int64)
        if not lengths.sum():
            return result
        owners = np.repeat(np.arange(len(shingles)), lengths)
        flat = np.concatenate([hashes for hashes in shingles if len(hashes)])
        for start in range(0, len(flat), BLOCK_ROWS):
            block_owners = owners[start : start + BLOCK_ROWS]
            values = self.permuted(flat[start : start + BLOCK_ROWS])
            # Segments of one owner within the block: one reduceat row each.
            starts = np.flatnonzero(np.r_[True, block_owners[1:] != block_owners[:-1]])
            docs = block_owners[starts]
            result[docs] = np.minimum(result[docs], np.minimum.reduceat(values, starts, axis=0))
        return result


def band_keys(signatures: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """(num_docs, bands) 64-bit keys, one per band of `rows` signature values: equal bands, equal keys.

    Distinct bands collide with probability about 2^-64 (an order-dependent sum, then a bijective mix).
    """
    grouped = signatures.reshape(len(signatures), bands, rows)
    return _fmix64((grouped * _POSITION_MULTIPLIERS[:rows]).sum(axis=2, dtype=np.uint64))


def jaccard(first: np.ndarray, second: np.ndarray) -> float:
    """Exact Jaccard similarity of two shingle-hash sets."""
    first, second = np.unique(first), np.unique(second)
    union = len(np.union1d(first, second))
    return len(np.intersect1d(first, second, assume_unique=True)) / union if union else 1.0


def pairs_in_groups(keys: np.ndarray, docs: np.ndarray) -> np.ndarray:
    """(m, 2) edges (smallest doc, other doc) for every run of equal `keys` (rows sorted by key, doc)."""
    same_as_previous = keys[1:] == keys[:-1]
    if not same_as_previous.any():
        return np.zeros((0, 2), dtype=np.int64)
    run_starts = np.flatnonzero(np.r_[True, ~same_as_previous])
    first_of_run = docs[run_starts[np.cumsum(np.r_[True, ~same_as_previous]) - 1]]
    member = np.r_[False, same_as_previous]
    return np.stack([first_of_run[member], docs[member]], axis=1).astype(np.int64)


class UnionFind:
    """Disjoint sets of integer keys whose root is always the smallest key in the set."""

    def __init__(self) -> None:
        self.parent: dict[int, int] = {}

    def find(self, key: int) -> int:
        parent = self.parent
        parent.setdefault(key, key)
        while parent[key] != key:
            parent[key] = parent[parent[key]]  # path halving
            key = parent[key]
        return key

    def union(self, first: int, second: int) -> None:
        first, second = self.find(first), self.find(second)
        if first != second:
            self.parent[max(first, second)] = min(first, second)


def clusters(edges: np.ndarray) -> tuple[np.ndarray, dict[int, int]]:
    """Connected components of `edges`: the keys to drop (all but each component's smallest key,
    ascending) and the histogram {component size: number of components}."""
    forest = UnionFind()
    for first, second in np.unique(edges, axis=0).tolist() if len(edges) else []:
        forest.union(first, second)
    roots = {key: forest.find(key) for key in forest.parent}
    drop = np.array(sorted(key for key, root in roots.items() if key != root), dtype=np.int64)
    sizes = Counter(Counter(roots.values()).values())
    return drop, dict(sorted(sizes.items()))
