"""Rows of input files: reading local .json/.jsonl/.parquet files or hub datasets, and typed field access.

A `Row` remembers its file and 1-based row number, so every problem found while converting it becomes a
`DataFormatError` that names the file, the row and the field. The format converters (data_formats.py,
hh_apo_formats.py) turn rows into the canonical records of data.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from apo_online.data.canonical import Messages
from apo_online.errors import DataFormatError  # noqa: F401 (re-exported)

ID_FIELDS = ("id", "query_id", "prompt_id")


@dataclass
class Row:
    source: str
    number: int  # 1-based
    data: dict[str, Any]

    def error(self, field: str | None, problem: str) -> DataFormatError:
        return DataFormatError(self.source, self.number, field, problem)

    def id_field(self) -> str | None:
        """The field holding this row's id (id, query_id or prompt_id), or None when it has none."""
        return next((key for key in ID_FIELDS if self.data.get(key) is not None), None)

    def record_id(self) -> str:
        """The row's id as a string; without an id field, "<file name>:<row>" (unique within a run)."""
        key = self.id_field()
        if key is None:
            return f"{Path(self.source).name}:{self.number}"
        value = self.data[key]
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise self.error(key, f"expected a string or an integer id, got {type(value).__name__}")
        return str(value)

    def text(self, field: str, required: bool = True, allow_empty: bool = False) -> str | None:
        """The field as a string. required: missing raises (else None); allow_empty: "" (or blanks) is a value
        (an empty response), else it raises."""
        value = self.data.get(field)
        if value is None:
            if required:
                raise self.error(field, "missing (expected a string)" if allow_empty else
                                 "missing (expected a non-empty string)")
            return None
        if not isinstance(value, str):
            raise self.error(field, f"expected a string, got {type(value).__name__}")
        if required and not allow_empty and not value.strip():
            raise self.error(field, "empty string")
        return value

    def messages(self, field: str) -> Messages:
        """A prompt field as chat messages: a plain string becomes one user turn."""
        value = self.data.get(field)
        if isinstance(value, str):
            if not value.strip():
                raise self.error(field, "empty string")
            return [{"role": "user", "content": value}]
        return self.message_list(field, value)

    def message_list(self, field: str, value: Any) -> Messages:
        if not isinstance(value, list) or not value:
            raise self.error(field, f"expected a string or a non-empty list of messages, got {value!r:.80}")
        for i, message in enumerate(value):
            if not isinstance(message, dict) or not isinstance(message.get("role"), str) or not isinstance(
                message.get("content"), str
            ):
                raise self.error(f"{field}[{i}]", "expected a message {'role': str, 'content': str}")
        return [{"role": m["role"], "content": m["content"]} for m in value]


# ------------------------------------------------------------------------------------------------------------------
# reading rows
# ------------------------------------------------------------------------------------------------------------------
def _read_json_file(path: Path) -> Iterator[Row]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise DataFormatError(str(path), None, None, f"not UTF-8 text ({err.reason} at byte {err.start})") from None
    if not text.strip():
        raise DataFormatError(str(path), None, None, "empty file")
    if path.suffix == ".jsonl":
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                data = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataFormatError(str(path), number, None, f"invalid JSON: {err.msg}") from None
            if not isinstance(data, dict):
                raise DataFormatError(str(path), number, None, f"expected a JSON object, got {type(data).__name__}")
            yield Row(str(path), number, data)
        return
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataFormatError(str(path), None, None, f"invalid JSON at line {err.lineno}: {err.msg}") from None
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list):
        raise DataFormatError(str(path), None, None, "expected a JSON list of objects (or .jsonl lines)")
    for number, item in enumerate(data, 1):
        if not isinstance(item, dict):
            raise DataFormatError(str(path), number, None, f"expected a JSON object, got {type(item).__name__}")
        yield Row(str(path), number, item)


def read_rows(name_or_path: str, split: str = "train") -> list[Row]:
    """Rows of a local json/jsonl/parquet file, or of a hub dataset split (needs a hub)."""
    path = Path(name_or_path)
    if path.suffix in (".json", ".jsonl"):
        if not path.is_file():
            raise DataFormatError(str(path), None, None, "file not found")
        rows = list(_read_json_file(path))
    else:
        import datasets

        if path.suffix == ".parquet":
            if not path.is_file():
                raise DataFormatError(str(path), None, None, "file not found")
            dataset = datasets.load_dataset("parquet", data_files=str(path), split="train")
        else:
            dataset = datasets.load_dataset(name_or_path, split=split)
        rows = [Row(str(name_or_path), i, dict(item)) for i, item in enumerate(dataset, 1)]
    if not rows:
        raise DataFormatError(str(name_or_path), None, None, "no rows")
    return rows
