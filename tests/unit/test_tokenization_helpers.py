"""Corpus builders for the tokenization tests: the cleaned-corpus Parquet layout, from real or tiny text.

The real corpus reader lives in `corpus/`; these tests parse WikiExtractor `<doc>` blocks themselves
so the tokenization stage can be tested on its own.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

DOC_PATTERN = re.compile(r'<doc id="(?P<id>[^"]+)"[^>]*>\n(?P<body>.*?)</doc>', re.DOTALL)


def parse_wiki_docs(path: Path) -> list[tuple[str, str]]:
    """(doc_id, text) for every `<doc>` block of a WikiExtractor file, title-only ones included."""
    text = Path(path).read_text(encoding="utf-8")
    return [(f"enwiki-{match['id']}", match["body"].strip()) for match in DOC_PATTERN.finditer(text)]


def enwiki_docs(data_dir: Path, max_chars: int) -> list[tuple[str, str]]:
    """Articles with a body (more than the title line) from wiki_00, wiki_01, ... up to `max_chars`."""
    docs: list[tuple[str, str]] = []
    total = 0
    for path in sorted((data_dir / "enwiki_extract").glob("wiki_*.txt")):
        for doc_id, text in parse_wiki_docs(path):
            if "\n" not in text:
                continue
            docs.append((doc_id, text))
            total += len(text)
            if total >= max_chars:
                return docs
    return docs


def write_corpus(corpus_dir: Path, docs: Sequence[tuple[str, str]], rows_per_file: int = 1000) -> Path:
    """Write `docs` as the cleaning stage does: part-NNNNN.parquet with doc_id, source, text."""
    corpus_dir.mkdir(parents=True, exist_ok=True)
    for index, start in enumerate(range(0, len(docs), rows_per_file)):
        chunk = docs[start : start + rows_per_file]
        table = pa.table(
            {
                "doc_id": [doc_id for doc_id, _ in chunk],
                "source": ["test"] * len(chunk),
                "text": [text for _, text in chunk],
            }
        )
        pq.write_table(table, corpus_dir / f"part-{index:05d}.parquet")
    return corpus_dir


@pytest.mark.unit
def test_parse_wiki_docs_counts_every_record(shared_data_dir):
    # SOURCE.md records 1530 <doc> records in wiki_00.txt.
    docs = parse_wiki_docs(shared_data_dir / "enwiki_extract" / "wiki_00.txt")
    assert len(docs) == 1530
    assert docs[1][0] == "enwiki-56564559"
    assert docs[1][1].startswith("Jarred Shaw\n\nJarred Shaw (born September 28, 1990)")


@pytest.mark.unit
def test_write_corpus_round_trips(tmp_path):
    docs = [(f"d{i}", f"text {i}") for i in range(5)]
    write_corpus(tmp_path, docs, rows_per_file=2)
    files = sorted(tmp_path.glob("part-*.parquet"))
    assert [path.name for path in files] == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    rows = [row for path in files for row in pq.read_table(path).to_pylist()]
    assert [(row["doc_id"], row["text"]) for row in rows] == docs


def train_small_tokenizers(
    corpus_dir: Path, tmp_path_factory, algorithms=("bpe", "wordpiece")
) -> dict[str, Path]:
    """A 1000-token tokenizer per algorithm, trained on `corpus_dir` (for module-scoped fixtures)."""
    from lmforge.tokenization import TokenizerConfig, train_tokenizer

    dirs = {}
    for algorithm in algorithms:
        dirs[algorithm] = tmp_path_factory.mktemp(algorithm)
        train_tokenizer(TokenizerConfig(algorithm=algorithm, vocab_size=1000), corpus_dir, dirs[algorithm])
    return dirs
