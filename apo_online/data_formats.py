"""Read prompts, gold responses and preference pairs from files or the hub, in several formats, into TaskData.

Rows come from local .json (a list), .jsonl or .parquet files, or from a hub dataset via `datasets`. Each row is
converted by a format converter into canonical records (data.py). A malformed row raises `DataFormatError` naming
the file, the row (1-based) and the field; with `data.skip_bad_rows` it is skipped and counted instead.

Formats:
  prompts  {"prompt": str | messages, "gold"|"golden"|"response": str (optional), "id"|"query_id": (optional)}
  trl      {"prompt": str | messages, "chosen": str | messages, "rejected": str | messages}; or implicit-prompt
           rows whose chosen/rejected are whole conversations sharing the leading turns
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from apo_online.data import Messages, PreferencePair, PromptExample, TaskData

logger = logging.getLogger(__name__)


class DataFormatError(ValueError):
    """A data row does not have the fields or types its format needs."""

    def __init__(self, source: str, row: int | None, field: str | None, problem: str):
        where = source if row is None else f"{source}, row {row}"
        if field:
            where += f", field {field!r}"
        super().__init__(f"{where}: {problem}")
        self.source, self.row, self.field = source, row, field


@dataclass
class Row:
    source: str
    number: int  # 1-based
    data: dict[str, Any]

    def error(self, field: str | None, problem: str) -> DataFormatError:
        return DataFormatError(self.source, self.number, field, problem)

    def text(self, field: str, required: bool = True) -> str | None:
        value = self.data.get(field)
        if value is None:
            if required:
                raise self.error(field, "missing (expected a non-empty string)")
            return None
        if not isinstance(value, str):
            raise self.error(field, f"expected a string, got {type(value).__name__}")
        if required and not value.strip():
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


# ------------------------------------------------------------------------------------------------------------------
# converters: Row -> canonical records
# ------------------------------------------------------------------------------------------------------------------
def _row_id(row: Row) -> str:
    for key in ("id", "query_id", "prompt_id"):
        if row.data.get(key) is not None:
            return str(row.data[key])
    return f"{Path(row.source).name}:{row.number}"


def convert_prompt(row: Row) -> list[PromptExample]:
    if "prompt" not in row.data:
        raise row.error("prompt", "missing (expected a string or a list of messages)")
    gold = next((row.text(k) for k in ("gold", "golden", "response") if row.data.get(k) is not None), None)
    return [PromptExample(_row_id(row), row.messages("prompt"), gold=gold)]


def _split_conversation(row: Row, chosen: Messages, rejected: Messages) -> tuple[Messages, str, str]:
    """Implicit-prompt TRL rows: the shared leading turns are the prompt, the last assistant turns differ."""
    shared = 0
    while shared < min(len(chosen), len(rejected)) - 1 and chosen[shared] == rejected[shared]:
        shared += 1
    if shared == 0 or chosen[-1]["role"] != "assistant" or rejected[-1]["role"] != "assistant":
        raise row.error("chosen", "implicit-prompt rows need shared leading turns and a final assistant turn")
    return chosen[:shared], chosen[-1]["content"], rejected[-1]["content"]


def convert_trl(row: Row) -> list[PreferencePair]:
    for key in ("chosen", "rejected"):
        if key not in row.data:
            raise row.error(key, "missing")
    if "prompt" in row.data:
        messages = row.messages("prompt")
        responses = []
        for key in ("chosen", "rejected"):
            value = row.data[key]
            if isinstance(value, list):
                value = row.message_list(key, value)[-1]["content"]
            elif not isinstance(value, str):
                raise row.error(key, f"expected a string or messages, got {type(value).__name__}")
            responses.append(value)
        return [PreferencePair(_row_id(row), messages, responses[0], responses[1])]
    chosen = row.message_list("chosen", row.data["chosen"])
    rejected = row.message_list("rejected", row.data["rejected"])
    messages, chosen_text, rejected_text = _split_conversation(row, chosen, rejected)
    return [PreferencePair(_row_id(row), messages, chosen_text, rejected_text)]


CONVERTERS: dict[str, Callable[[Row], list]] = {"prompts": convert_prompt, "trl": convert_trl}


def detect_format(row: Row) -> str:
    keys = set(row.data)
    if {"chosen", "rejected"} <= keys:
        return "trl"
    if "prompt" in keys:
        return "prompts"
    raise row.error(None, f"cannot tell the format from the fields {sorted(keys)}; set data.format")


def convert_rows(rows: list[Row], fmt: str, skip_bad_rows: bool) -> tuple[list, int]:
    """Convert every row with format `fmt` ("auto": detect from the first row). Returns (records, skipped)."""
    fmt = detect_format(rows[0]) if fmt == "auto" else fmt
    if fmt not in CONVERTERS:
        raise ValueError(f"unknown data format {fmt!r}: expected auto or one of {sorted(CONVERTERS)}")
    records, skipped = [], 0
    for row in rows:
        try:
            records.extend(CONVERTERS[fmt](row))
        except DataFormatError as err:
            if not skip_bad_rows:
                raise
            skipped += 1
            logger.warning("skipped bad row: %s", err)
    return records, skipped


def load_task_data(data_config, seed: int = 0) -> TaskData:
    """TaskData for a DataConfig: the embedded default, or prompts/preferences read from files or the hub."""
    if data_config.dataset_name == "embedded":
        from apo_online.embedded import build_embedded_task

        task = build_embedded_task(seed)
    else:
        records, skipped = convert_rows(read_rows(data_config.dataset_name, data_config.dataset_split),
                                        data_config.format, data_config.skip_bad_rows)
        prompts = [r for r in records if isinstance(r, PromptExample)]
        pairs = [r for r in records if isinstance(r, PreferencePair)]
        if not prompts:  # a preference dataset: its prompts are the policy's queries, its chosen the gold
            prompts = [PromptExample(p.prompt_id, p.messages, gold=p.chosen) for p in pairs]
        task = TaskData(train_prompts=prompts, preference_pairs=pairs, skipped_rows=skipped)
    for attribute, path in (("preference_pairs", data_config.preference_file),
                            ("eval_preference_pairs", data_config.eval_preference_file)):
        if path:
            records, skipped = convert_rows(read_rows(path), "auto", data_config.skip_bad_rows)
            setattr(task, attribute, [r for r in records if isinstance(r, PreferencePair)])
            task.skipped_rows += skipped
    if data_config.max_prompts:
        task.train_prompts = task.train_prompts[: data_config.max_prompts]
    if data_config.max_preference_pairs:
        task.preference_pairs = task.preference_pairs[: data_config.max_preference_pairs]
    if task.skipped_rows:
        logger.warning("skipped %d bad rows (data.skip_bad_rows=true)", task.skipped_rows)
    return task
