"""Reader for WikiExtractor output: `<doc id=".." url=".." title="..">` blocks, title line first."""

from __future__ import annotations

import html
import re
from collections.abc import Iterator

from lmforge.corpus.config import SourceConfig
from lmforge.corpus.readers import READERS, DocumentBuffer, RawRecord, bounded_lines, skips_binary_files

_DOC_START = re.compile(rb"^<doc(\s[^>]*)?>\s*$")
_DOC_END = b"</doc>"
_ATTRIBUTE = re.compile(rb'(\w+)="([^"]*)"')


@READERS.register("wikiextractor")
@skips_binary_files
def read_wikiextractor(target: str, source: SourceConfig) -> Iterator[RawRecord]:
    """One record per `<doc>`; its text is the body (title line included), keyed by the `id` attribute.

    A `<doc>` left open (a new `<doc>` or end of file before `</doc>`) is `malformed_doc`; a body over
    `source.max_document_bytes` is `document_too_large` (its lines are not held); text outside any
    `<doc>` is ignored, as WikiExtractor writes none.
    """
    seen: dict[str, int] = {}
    key: str | None = None
    body = DocumentBuffer(source.max_document_bytes)
    ordinal = 0
    with open(target, "rb") as handle:
        for line in bounded_lines(handle, source.max_document_bytes):
            start = _DOC_START.match(line) if line is not None else None
            if start:
                if key is not None:
                    yield RawRecord(key, None, "malformed_doc")
                key = _unique_key(_doc_id(start.group(1) or b"", ordinal), seen)
                ordinal += 1
                body = DocumentBuffer(source.max_document_bytes)
            elif key is not None and line is not None and line.rstrip() == _DOC_END:
                yield body.record(key)
                key = None
            elif key is not None:
                body.add(line)
    if key is not None:
        yield RawRecord(key, None, "malformed_doc")


def _doc_id(attributes: bytes, ordinal: int) -> str:
    values = {name: value for name, value in _ATTRIBUTE.findall(attributes)}
    raw = values.get(b"id", b"").decode("utf-8", errors="replace").strip()
    return html.unescape(raw) if raw else f"#{ordinal}"


def _unique_key(key: str, seen: dict[str, int]) -> str:
    # doc_id must be unique even if a dump repeats a page id within one file.
    count = seen.get(key, 0)
    seen[key] = count + 1
    return key if count == 0 else f"{key}~{count}"
