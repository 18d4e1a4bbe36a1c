"""The formats stage of data loading: rows (data_rows.py) -> canonical records (data.py), one converter per format
(this file and hh_apo_formats.py), the table of them and the detection of a file's format; task.py assembles the
records into TaskData. A new format is one converter function and one entry of CONVERTERS.

Rows come from local .json (a list), .jsonl or .parquet files, or from a hub dataset via `datasets` (data_rows.py).
Each row is converted by a format converter into canonical records (data.py). A malformed row raises
`DataFormatError` naming the file, the row (1-based) and the field; with `data.skip_bad_rows` it is skipped and
counted instead (TaskData.skipped keeps each error, logged; a task left without prompts says how many rows were
skipped and why).

Formats (data.format; "auto" detects it from the fields of the first row):
  prompts          {"prompt": str | messages, "gold"|"golden"|"response": str (optional), "id"|"query_id": (optional)}
  trl              {"prompt": str | messages, "chosen": str | messages, "rejected": str | messages}; or implicit-prompt
                   rows whose chosen/rejected are whole conversations sharing the leading turns
  hh, apo_text_scores, apo_golden, apo_samples   Anthropic HH and the APO reference repo (hh_apo_formats.py)
A preference dataset used as data.dataset_name also gives the policy's prompts: one per row, the chosen response of
its first (best) pair as gold. data.gold_file (APO golden format) sets gold responses by prompt id.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from apo_online.data.canonical import Messages, PreferencePair, PromptExample
from apo_online.data.rows import DataFormatError, Row, read_rows  # noqa: F401 (read_rows: re-exported)
from apo_online.data.hh_apo_formats import (
    convert_apo_golden,
    convert_apo_samples,
    convert_apo_text_scores,
    convert_hh,
)

__all__ = ["CONVERTERS", "DataFormatError", "Row", "convert_rows", "convert_rows_with_origin", "detect_format",
           "read_rows"]

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------------------------
# converters: Row -> canonical records
# ------------------------------------------------------------------------------------------------------------------
def convert_prompt(row: Row) -> list[PromptExample]:
    if "prompt" not in row.data:
        raise row.error("prompt", "missing (expected a string or a list of messages)")
    gold = next((row.text(k) for k in ("gold", "golden", "response") if row.data.get(k) is not None), None)
    return [PromptExample(row.record_id(), row.messages("prompt"), gold=gold)]


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
        return [PreferencePair(row.record_id(), messages, responses[0], responses[1])]
    chosen = row.message_list("chosen", row.data["chosen"])
    rejected = row.message_list("rejected", row.data["rejected"])
    messages, chosen_text, rejected_text = _split_conversation(row, chosen, rejected)
    return [PreferencePair(row.record_id(), messages, chosen_text, rejected_text)]


CONVERTERS: dict[str, Callable[[Row], list]] = {
    "prompts": convert_prompt,
    "trl": convert_trl,
    "hh": convert_hh,
    "apo_text_scores": convert_apo_text_scores,
    "apo_golden": convert_apo_golden,
    "apo_samples": convert_apo_samples,
}


def detect_format(row: Row) -> str:
    keys = set(row.data)
    if {"text", "scores"} <= keys:
        return "apo_text_scores"
    if {"query_id", "golden"} <= keys:
        return "apo_golden"
    if {"query_id", "query"} <= keys:
        return "apo_samples"
    if {"chosen", "rejected"} <= keys:
        # HH rows hold whole dialogues as plain strings; TRL rows have a prompt, or chosen/rejected as messages
        return "hh" if "prompt" not in keys and isinstance(row.data["chosen"], str) else "trl"
    if "prompt" in keys:
        return "prompts"
    raise row.error(None, f"cannot tell the format from the fields {sorted(keys)}; set data.format")


def skip_or_raise(err: DataFormatError, skip_bad_rows: bool) -> DataFormatError:
    """Raise err, or with skip_bad_rows log it and return it (the caller keeps it in its list of skipped rows)."""
    if not skip_bad_rows:
        raise err
    logger.warning("skipped bad row: %s", err)
    return err


def convert_rows_with_origin(rows: list[Row], fmt: str,
                             skip_bad_rows: bool) -> tuple[list[tuple[Row, object]], list[DataFormatError]]:
    """Like convert_rows, keeping each record's row: ([(row, record)], [error of each skipped row])."""
    fmt = detect_format(rows[0]) if fmt == "auto" else fmt
    if fmt not in CONVERTERS:
        raise ValueError(f"unknown data format {fmt!r}: expected auto or one of {sorted(CONVERTERS)}")
    converted, skipped = [], []
    for row in rows:
        try:
            converted.extend((row, record) for record in CONVERTERS[fmt](row))
        except DataFormatError as err:
            skipped.append(skip_or_raise(err, skip_bad_rows))
    return converted, skipped


def convert_rows(rows: list[Row], fmt: str, skip_bad_rows: bool) -> tuple[list, int]:
    """Convert every row with format `fmt` ("auto": detect from the first row). Returns (records, rows skipped)."""
    converted, skipped = convert_rows_with_origin(rows, fmt, skip_bad_rows)
    return [record for _, record in converted], len(skipped)
