"""Generic readers for downstream-task data, configured by YAML alone.

`read_table` reads csv/tsv (with or without a header), JSON lines (or one JSON array), Parquet, or an
`hf://` hub split (text formats may be gzipped) into a `Table` whose rows remember where they came from,
so every error can name the config key, the file, the line and the value. Columns are picked by name or
position, labels are discovered (or listed in the config, or read from a line-aligned file), and
`carve_split` cuts a seeded dev split out of a train file.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from numbers import Integral
from pathlib import Path
from typing import Any

from lmforge.core.errors import ConfigError, DataError, LmforgeError
from lmforge.infra.data_paths import is_hf_uri, resolve_file
from lmforge.tasks.data import load_hub_split, parse_hf_uri

FORMATS = ("csv", "tsv", "jsonl", "parquet")
EXTENSIONS = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
}
SHOWN_SKIPPED = 3  # skipped-record messages quoted in a "nothing usable" error
INT_TEXT = re.compile(r"[+-]?\d+")


@dataclass(frozen=True)
class Table:
    """The usable records of one file or hub split, each with its line (or row) number."""

    source: str
    columns: list[str]
    rows: list[dict[str, Any]]
    lines: list[int]
    skipped: list[str] = field(default_factory=list)
    class_names: dict[str, list[str]] = field(default_factory=dict)
    numbered_by_row: bool = False  # parquet and hub tables count rows, not lines

    def where(self, index: int) -> str:
        """`<source>:<line>` for text files, `<source> row <n>` for parquet and hub tables."""
        if self.numbered_by_row:
            return f"{self.source} row {self.lines[index]}"
        return f"{self.source}:{self.lines[index]}"


def detect_format(path: str, format: str, key: str) -> str:
    """The reader for `path`: "hf" for a hub URI, else `format`, or by extension when `format` is "auto"."""
    if is_hf_uri(path):
        if format not in ("auto", "hf"):
            raise ConfigError(
                f"{key}: format {format!r} does not apply to the hub data set {path!r}; leave format: unset"
            )
        return "hf"
    if format != "auto":
        if format not in FORMATS:
            raise ConfigError(f"{key}: format {format!r} is not one of auto, {', '.join(FORMATS)}")
        return format
    name = path.lower().removesuffix(".gz")
    for extension, detected in EXTENSIONS.items():
        if name.endswith(extension):
            return detected
    raise ConfigError(
        f"{key}: cannot tell the format of {path!r} from its extension (known: {', '.join(EXTENSIONS)}, "
        f"optionally followed by .gz); set format: to one of {', '.join(FORMATS)}"
    )


def read_table(
    path: str,
    data_dir: Path | None,
    key: str,
    *,
    format: str = "auto",
    header: bool = True,
    split: str = "train",
    hf_config: str | None = None,
) -> Table:
    """Every usable record of a csv/tsv/jsonl/parquet file or an `hf://` split; unusable ones go to `skipped`.

    `header` applies to csv/tsv only: False names the columns "0", "1", ... by position.
    """
    detected = detect_format(path, format, key)
    if detected == "hf":
        table = _read_hub(path, key, hf_config, split)
    else:
        file = resolve_file(path, data_dir, key)
        if detected == "parquet":
            table = _read_parquet(file, key)
        elif detected == "jsonl":
            table = _read_jsonl(str(file), read_text(file, key))
        else:
            table = _read_delimited(str(file), read_text(file, key), detected, header)
    if not table.rows:
        shown = "; ".join(table.skipped[:SHOWN_SKIPPED])
        more = (
            f" (and {len(table.skipped) - SHOWN_SKIPPED} more)" if len(table.skipped) > SHOWN_SKIPPED else ""
        )
        reason = f": every record was unusable: {shown}{more}" if shown else ""
        expected = " (JSON lines: one JSON object per line)" if detected == "jsonl" and table.skipped else ""
        raise DataError(f"{key}: {table.source} holds no usable {detected} record{reason}{expected}")
    return table


def read_text(file: Path, key: str) -> str:
    """A data file's text: gzip undone, UTF-8 (a BOM dropped); errors name the file and line."""
    raw = file.read_bytes()
    if file.name.lower().endswith(".gz"):
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as err:
            raise DataError(f"{key}: {file} is not a readable gzip file ({err})") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise DataError(
            f"{key}: {file}:{line}: not UTF-8 (byte {raw[err.start : err.start + 1]!r} at offset {err.start}); "
            "convert the file to UTF-8"
        ) from None


def _read_delimited(source: str, text: str, format: str, header: bool) -> Table:
    columns: list[str] | None = None
    rows: list[dict[str, Any]] = []
    lines: list[int] = []
    skipped: list[str] = []
    for line, fields in _records(source, text, format):
        if columns is None:
            columns = _header_names(source, line, fields) if header else [str(i) for i in range(len(fields))]
            if header:
                continue
        if len(fields) != len(columns):
            skipped.append(f"{source}:{line}: expected {len(columns)} fields, found {len(fields)}")
            continue
        rows.append(dict(zip(columns, fields, strict=True)))
        lines.append(line)
    return Table(source, columns or [], rows, lines, skipped)


def _records(source: str, text: str, format: str) -> list[tuple[int, list[str]]]:
    """(1-based first line, fields) of every non-blank record."""
    if format == "tsv":
        # GLUE files hold bare quotes, so tabs split fields and quotes mean nothing.
        split = (line.removesuffix("\r") for line in text.split("\n"))
        return [(number, line.split("\t")) for number, line in enumerate(split, start=1) if line.strip()]
    records = []
    reader = csv.reader(io.StringIO(text, newline=""))
    last_line = 0
    try:
        for fields in reader:
            if fields and not (len(fields) == 1 and not fields[0].strip()):
                records.append((last_line + 1, fields))
            last_line = reader.line_num
    except csv.Error as err:
        raise DataError(f"{source}:{last_line + 1}: not valid csv ({err})") from None
    return records


def _header_names(source: str, line: int, fields: list[str]) -> list[str]:
    names = [name.strip() for name in fields]
    duplicates = sorted({name for name in names if names.count(name) > 1 and name})
    empty = [str(i) for i, name in enumerate(names) if not name]
    if duplicates or empty:
        problems = ([f"duplicate names {duplicates}"] if duplicates else []) + (
            [f"empty names at positions {', '.join(empty)}"] if empty else []
        )
        raise DataError(
            f"{source}:{line}: the header line has {' and '.join(problems)}; give every column a distinct "
            "name, or set header: false if the file has no header line"
        )
    return names


def _read_jsonl(source: str, text: str) -> Table:
    """JSON lines; a file holding one JSON array (a common `.json` layout) gives one record per item."""
    items = _json_array(text)
    if items is not None:
        return _json_table(source, list(enumerate(items, start=1)), [], numbered_by_row=True)
    numbered: list[tuple[int, Any]] = []
    skipped: list[str] = []
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            numbered.append((number, json.loads(line)))
        except json.JSONDecodeError as err:
            skipped.append(f"{source}:{number}: not valid JSON ({err.msg} at column {err.colno})")
    return _json_table(source, numbered, skipped, numbered_by_row=False)


def _json_array(text: str) -> list[Any] | None:
    if not text.lstrip().startswith("["):
        return None
    try:
        items = json.loads(text)
    except json.JSONDecodeError:
        return None  # read line by line: each bad line is reported where it is
    return items if isinstance(items, list) else None


def _json_table(
    source: str, numbered: list[tuple[int, Any]], skipped: list[str], numbered_by_row: bool
) -> Table:
    """Objects become rows over the union of their keys (first-seen order, absent keys None)."""
    columns: dict[str, None] = {}
    objects: list[dict[str, Any]] = []
    lines: list[int] = []
    for number, record in numbered:
        if not isinstance(record, dict):
            where = f"{source} row {number}" if numbered_by_row else f"{source}:{number}"
            skipped.append(f"{where}: expected a JSON object, found {type(record).__name__}")
            continue
        columns.update(dict.fromkeys(record))
        objects.append(record)
        lines.append(number)
    rows = [{name: record.get(name) for name in columns} for record in objects]
    return Table(source, list(columns), rows, lines, skipped, numbered_by_row=numbered_by_row)


def _read_parquet(file: Path, key: str) -> Table:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        data = pq.read_table(file)
    except (pa.ArrowException, OSError) as err:
        raise DataError(f"{key}: {file} is not a readable parquet file ({err})") from None
    rows = data.to_pylist()
    return Table(
        str(file), list(data.column_names), rows, list(range(1, len(rows) + 1)), numbered_by_row=True
    )


def _read_hub(path: str, key: str, hf_config: str | None, split: str) -> Table:
    hub = parse_hf_uri(path, key, hf_config, split)
    try:
        data = load_hub_split(hub)
    except LmforgeError:
        raise
    except Exception as err:  # network, unknown data set, config or split: all mean "cannot read"
        raise DataError(
            f"{key}: cannot load {path!r} (data set {hub.dataset}, config {hub.config}, split {hub.split}): "
            f"{type(err).__name__}: {err}"
        ) from None
    # A ClassLabel value is a position in its feature's names: read it as that name, so a label set
    # listed in another order, or names that are themselves digits ("1", "2"), cannot remap it.
    # -1 (unlabelled, as in GLUE test splits) reads as None. Sequence(ClassLabel) columns (NER tags)
    # keep their integers; class_names names them for the task to map.
    class_names: dict[str, list[str]] = {}
    converted: dict[str, list[str]] = {}
    for name, feature in data.features.items():
        if type(feature).__name__ == "ClassLabel":
            class_names[name] = converted[name] = list(feature.names)
        inner = getattr(feature, "feature", None)
        if type(feature).__name__ in ("Sequence", "List") and type(inner).__name__ == "ClassLabel":
            class_names[name] = list(getattr(inner, "names", []))
    rows = data.to_list()
    for row in rows:
        for name, names in converted.items():
            value = row.get(name)
            if isinstance(value, int) and not isinstance(value, bool):
                row[name] = names[value] if 0 <= value < len(names) else None
    lines = list(range(1, len(rows) + 1))
    return Table(path, list(data.column_names), rows, lines, class_names=class_names, numbered_by_row=True)


def column_name(table: Table, spec: str | int, key: str) -> str:
    """The column `spec` names: a column name, or a 0-based position (an int, or a digit string)."""
    if isinstance(spec, str) and spec in table.columns:
        return spec
    position = spec if isinstance(spec, int) and not isinstance(spec, bool) else None
    if isinstance(spec, str) and spec.strip().isdigit():
        position = int(spec)
    found = ", ".join(table.columns)
    if position is None:
        raise DataError(f"{key}: column {spec!r} not found in {table.source} (columns: {found})")
    if not 0 <= position < len(table.columns):
        raise DataError(
            f"{key}: column {spec!r} is out of range for {table.source}, which has {len(table.columns)} "
            f"columns (positions 0-{len(table.columns) - 1}: {found})"
        )
    return table.columns[position]


def column_values(table: Table, spec: str | int, key: str, *, required: bool = True) -> list[Any]:
    """The values of one column; with `required`, a missing or blank value is a DataError naming its row."""
    name = column_name(table, spec, key)
    values = [row[name] for row in table.rows]
    if required:
        for index, value in enumerate(values):
            if value is None or (isinstance(value, str) and not value.strip()):
                raise DataError(
                    f"{key}: column {name!r} is empty at {table.where(index)} (found {value!r}); "
                    "every record needs a value there"
                )
    return values


@dataclass(frozen=True)
class LabelSet:
    """Class names by index; `accepts_indices`: an integer value in range also names its class."""

    names: list[str]
    accepts_indices: bool = False
    _index: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_index", {name: i for i, name in enumerate(self.names)})

    def index_of(self, value: Any, where: str, key: str) -> int:
        """The class index of one label value; a value outside the set is a DataError naming it and `where`."""
        text = _label_text(value)
        if text in self._index:
            return self._index[text]
        number = _as_int(value)
        if number is not None and str(number) in self._index:
            return self._index[str(number)]
        if number is not None and self.accepts_indices and 0 <= number < len(self.names):
            return number
        if value is None or text == "":
            raise DataError(f"{key}: no label at {where} (found {value!r}); expected one of {self.names}")
        indices = f" (nor a class index 0-{len(self.names) - 1})" if self.accepts_indices else ""
        hint = "; -1 usually marks an unlabelled (test) split" if number == -1 else ""
        raise DataError(
            f"{key}: label {value!r} at {where} is not in the label set {self.names}{indices}{hint}"
        )


def discover_labels(
    values: Sequence[Any],
    listed: Sequence[str | int] | None,
    key: str,
    *,
    class_names: Sequence[str] | None = None,
    wheres: Sequence[str] | None = None,
) -> LabelSet:
    """The label set of `values`: `listed` (config order), else the hub's class names, else the sorted values.

    Every value is checked against the set; `wheres[i]` names where values[i] came from.
    """
    if listed is not None:
        labels = _listed_labels(listed, key)
    elif class_names is not None:
        # Hub ClassLabel values arrive as their names (read_table converts them).
        labels = LabelSet([str(name) for name in class_names])
    else:
        labels = _labels_from_values(values, key, wheres)
    for index, value in enumerate(values):
        labels.index_of(value, wheres[index] if wheres is not None else f"record {index + 1}", key)
    return labels


def _listed_labels(listed: Sequence[str | int], key: str) -> LabelSet:
    names = [_label_text(name) for name in listed]
    yaml_hint = (
        "; YAML reads unquoted yes/no/true/false as booleans, quote them"
        if any(isinstance(name, bool) for name in listed)
        else ""
    )
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if not names or "" in names or duplicates:
        problem = "is empty" if not names else "has an empty name" if "" in names else f"repeats {duplicates}"
        raise ConfigError(
            f"{key}: the listed labels {list(listed)} {problem}; list each class once{yaml_hint}"
        )
    all_integers = all(_as_int(name) is not None for name in listed)
    return LabelSet(names, accepts_indices=not all_integers)


def _labels_from_values(values: Sequence[Any], key: str, wheres: Sequence[str] | None) -> LabelSet:
    for index, value in enumerate(values):
        if value is None or _label_text(value) == "":
            where = wheres[index] if wheres is not None else f"record {index + 1}"
            raise DataError(f"{key}: no label at {where} (found {value!r}); every record needs a label")
    numbers = [_as_int(value) for value in values]
    if values and all(number is not None for number in numbers):
        return LabelSet([str(number) for number in sorted({n for n in numbers if n is not None})])
    return LabelSet(sorted({_label_text(value) for value in values}))


def _label_text(value: Any) -> str:
    """A label value as the text it is matched by: 1, 1.0 and " 1 " all read "1"; bools read True/False."""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, Integral):
        return str(int(value))
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, Integral):
        return int(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and INT_TEXT.fullmatch(value.strip()):
        return int(value)
    return None


def read_label_file(path: str, data_dir: Path | None, key: str) -> list[str]:
    """One stripped label per line; trailing blank lines are ignored, a blank line among labels is an error."""
    file = resolve_file(path, data_dir, key)
    labels = [line.strip() for line in read_text(file, key).split("\n")]
    while labels and not labels[-1]:
        labels.pop()
    if not labels:
        raise DataError(f"{key}: {file} holds no labels; expected one label per line")
    for number, label in enumerate(labels, start=1):
        if not label:
            raise DataError(
                f"{key}: {file}:{number}: blank line among the labels; expected one label per line"
            )
    return labels


def attach_labels(table: Table, labels: Sequence[str], column: str, key: str, labels_source: str) -> Table:
    """A copy of `table` with `column` filled from a label list aligned with its records."""
    if table.skipped:
        raise DataError(
            f"{key}: cannot align the labels of {labels_source} with {table.source}: {len(table.skipped)} "
            f"record(s) were unusable (first: {table.skipped[0]}); fix them so record i has label line i"
        )
    if column in table.columns:
        raise ConfigError(
            f"{key}: {table.source} already has a column {column!r}; name the labels column differently"
        )
    if len(labels) != len(table.rows):
        raise DataError(
            f"{key}: {labels_source} holds {len(labels)} labels but {table.source} holds {len(table.rows)} "
            "records; the label file must have one line per record"
        )
    rows = [{**row, column: label} for row, label in zip(table.rows, labels, strict=True)]
    return Table(
        table.source,
        [*table.columns, column],
        rows,
        list(table.lines),
        [],
        dict(table.class_names),
        table.numbered_by_row,
    )


def carve_split(n: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(train indices, dev indices), both sorted: a seeded shuffle of range(n), the first share going to dev."""
    if not 0 < fraction < 1:
        raise ConfigError(f"the dev fraction must be between 0 and 1 (exclusive), got {fraction}")
    if n < 2:
        raise DataError(f"cannot carve a dev split out of {n} record(s); at least 2 are needed")
    order = list(range(n))
    random.Random(seed).shuffle(order)
    dev_size = min(max(1, round(fraction * n)), n - 1)
    return sorted(order[dev_size:]), sorted(order[:dev_size])
