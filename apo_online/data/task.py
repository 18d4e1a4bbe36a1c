"""The task stage of data loading: the records of every configured file (data_formats.py), or a built-in task,
assembled into TaskData: prompts taken from a preference dataset when it is the dataset, prompt-id uniqueness, the
join of gold responses by id (data.gold_file), the data.max_* cuts, and the check that some prompt is left.
"""

from __future__ import annotations

import logging

from apo_online.data.canonical import PreferencePair, PromptExample, TaskData
from apo_online.data.formats import convert_rows_with_origin, skip_or_raise
from apo_online.data.rows import DataFormatError, Row, read_rows
from apo_online.testbeds.embedded import build_embedded_task
from apo_online.data.hh_apo_formats import GoldResponse
from apo_online.testbeds.judged_task import DATASET_VERSIONS, build_judged_task

logger = logging.getLogger(__name__)


def _prompts_from_pairs(pairs: list[tuple[Row, PreferencePair]]) -> list[tuple[Row, PromptExample]]:
    """A preference dataset as policy prompts: one per row, its first pair's chosen response as gold."""
    prompts, seen_rows = [], set()
    for row, pair in pairs:
        if (row.source, row.number) not in seen_rows:
            seen_rows.add((row.source, row.number))
            prompts.append((row, PromptExample(pair.prompt_id, pair.messages, gold=pair.chosen)))
    return prompts


def unique_prompts(prompts: list[PromptExample], prompt_rows: list[Row | None], skip_bad_rows: bool,
                   why: str = "") -> tuple[list[PromptExample], list[DataFormatError]]:
    """The prompts without those whose id an earlier prompt already had: an error naming the later row, or with
    skip_bad_rows a skipped row. Returns (prompts, [error of each skipped row])."""
    skipped, first_row, kept = [], {}, []
    for prompt, row in zip(prompts, prompt_rows):
        if prompt.prompt_id in first_row:
            problem = f"duplicate prompt id {prompt.prompt_id!r} (first at row {first_row[prompt.prompt_id]}){why}"
            skipped.append(skip_or_raise(row.error(row.id_field(), problem) if row else
                                          DataFormatError("prompts", None, None, problem), skip_bad_rows))
            continue
        first_row[prompt.prompt_id] = row.number if row else len(kept) + 1
        kept.append(prompt)
    return kept, skipped


def attach_gold_responses(prompts: list[PromptExample], prompt_rows: list[Row | None], gold_path: str,
                          skip_bad_rows: bool) -> tuple[list[PromptExample], list[DataFormatError]]:
    """Set PromptExample.gold from an APO golden file ({query_id, golden}), joined on prompt_id == query_id.

    Errors, or with skip_bad_rows skipped rows (counted): a prompt id used twice (the later prompt), a gold
    query_id used twice (the later gold row), a gold query_id that matches no prompt. A gold from the file
    replaces a gold the prompt already had. Returns (prompts, [error of each skipped row])."""
    kept, skipped = unique_prompts(prompts, prompt_rows, skip_bad_rows, "; data.gold_file joins gold responses by id")
    by_id = {prompt.prompt_id: prompt for prompt in kept}
    golds, gold_skipped = convert_rows_with_origin(read_rows(gold_path), "apo_golden", skip_bad_rows)
    skipped += gold_skipped
    gold_row: dict[str, int] = {}
    for row, gold in golds:
        if gold.query_id in gold_row:
            problem = f"duplicate query_id {gold.query_id!r} (first at row {gold_row[gold.query_id]})"
        elif gold.query_id not in by_id:
            problem = f"query_id {gold.query_id!r} matches no prompt id of data.dataset_name"
        else:
            gold_row[gold.query_id] = row.number
            by_id[gold.query_id].gold = gold.golden
            continue
        skipped.append(skip_or_raise(row.error("query_id", problem), skip_bad_rows))
    return kept, skipped


# the offline tasks: embedded.py, and the judged testbed by version (judged_task.py; embedded_judged is v2)
BUILTIN_TASKS = ("embedded", *DATASET_VERSIONS)


def _builtin_task(data_config, seed: int, model_config) -> TaskData:
    if data_config.dataset_name == "embedded":
        return build_embedded_task(seed)
    if model_config is None:
        raise ValueError(f"data.dataset_name {data_config.dataset_name} samples candidates from the base model: pass "
                         "model_config")
    return build_judged_task(model_config, data_config, seed)


def _read_dataset(data_config) -> tuple[TaskData, list[Row | None]]:
    converted, skipped = convert_rows_with_origin(read_rows(data_config.dataset_name, data_config.dataset_split),
                                                  data_config.format, data_config.skip_bad_rows)
    if any(isinstance(record, GoldResponse) for _, record in converted):
        raise DataFormatError(data_config.dataset_name, None, None,
                              "holds gold responses ({query_id, golden}) but no queries: give it as data.gold_file "
                              "and the queries (e.g. an APO samples file) as data.dataset_name")
    pairs = [(row, r) for row, r in converted if isinstance(r, PreferencePair)]
    prompts = [(row, r) for row, r in converted if isinstance(r, PromptExample)]
    if prompts:  # a prompt file: ids name queries (gold and offline samples are matched by them), so one per query
        kept, duplicates = unique_prompts([p for _, p in prompts], [row for row, _ in prompts],
                                          data_config.skip_bad_rows)
        skipped += duplicates
        kept_ids = {id(p) for p in kept}
        prompts = [(row, p) for row, p in prompts if id(p) in kept_ids]
    else:  # a preference dataset (several pairs of one prompt may share its id: checked only for data.gold_file)
        prompts = _prompts_from_pairs(pairs)
    task = TaskData(train_prompts=[p for _, p in prompts], preference_pairs=[p for _, p in pairs], skipped=skipped)
    return task, [row for row, _ in prompts]


def load_task_data(data_config, seed: int = 0, model_config=None) -> TaskData:
    """TaskData for a DataConfig: a built-in task (embedded, or embedded_judged, which samples candidates from
    model_config's base model once), or prompts/preferences read from files or the hub."""
    if data_config.dataset_name in BUILTIN_TASKS:
        task = _builtin_task(data_config, seed, model_config)
        prompt_rows: list[Row | None] = [None] * len(task.train_prompts)
    else:
        task, prompt_rows = _read_dataset(data_config)
    for attribute, path in (("preference_pairs", data_config.preference_file),
                            ("eval_preference_pairs", data_config.eval_preference_file)):
        if path:
            converted, skipped = convert_rows_with_origin(read_rows(path), "auto", data_config.skip_bad_rows)
            setattr(task, attribute, [r for _, r in converted if isinstance(r, PreferencePair)])
            task.skipped += skipped
    if data_config.gold_file:  # before max_prompts: every gold row must find its prompt
        task.train_prompts, skipped = attach_gold_responses(task.train_prompts, prompt_rows, data_config.gold_file,
                                                            data_config.skip_bad_rows)
        task.skipped += skipped
    if data_config.max_prompts:
        task.train_prompts = task.train_prompts[: data_config.max_prompts]
    if data_config.max_preference_pairs:
        task.preference_pairs = task.preference_pairs[: data_config.max_preference_pairs]
    if task.skipped:
        logger.warning("%s", task.skipped_summary())
    if not task.train_prompts:
        raise DataFormatError(data_config.dataset_name, None, None, "no usable prompts: "
                              + (task.skipped_summary() if task.skipped else "the file gives none"))
    empty = task.empty_responses()
    if empty:
        logger.warning("%d empty responses: they train as the stop token alone (data/empty_responses)", empty)
    samples = sum(len(p.samples) for p in task.train_prompts)
    if samples and not data_config.seed_buffer_from_samples:
        logger.info("%d offline samples read but unused (data.seed_buffer_from_samples: false)", samples)
    return task
