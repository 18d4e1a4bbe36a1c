"""Every input format round-trips: canonical records -> a fixture file in that format (written here) -> the loader ->
the same canonical records. Malformed rows raise DataFormatError naming the file, the row and the field."""

import json
import re

import pytest

from apo_online.config import DataConfig
from apo_online.data.canonical import PreferencePair, PromptExample
from apo_online.data.formats import DataFormatError, convert_rows, detect_format, read_rows
from apo_online.data.task import load_task_data
from apo_online.rm.apo_step import SampleBuffer

SINGLE = [{"role": "user", "content": "What is the capital of France?"}]
MULTI = [{"role": "user", "content": "Hi, can you help me cook?"},
         {"role": "assistant", "content": "Sure, what would you like to make?"},
         {"role": "user", "content": "A quick omelette."}]
PAIRS = [
    PreferencePair("p1", SINGLE, "Paris.", "I do not know."),
    PreferencePair("p2", MULTI, "Beat two eggs, then cook them in butter.", "Just buy one."),
]


def write(path, rows):
    if path.suffix == ".json":
        path.write_text(json.dumps(rows), encoding="utf-8")
    else:
        path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return str(path)


def load(path, fmt="auto"):
    records, skipped = convert_rows(read_rows(path), fmt, skip_bad_rows=False)
    assert skipped == 0
    return records


def canonical(pairs):
    return [(p.messages, p.chosen, p.rejected) for p in pairs]


def hh_dialogue(messages, response):
    turns = "".join(f"\n\n{'Human' if m['role'] == 'user' else 'Assistant'}: {m['content']}" for m in messages)
    return f"{turns}\n\nAssistant: {response}"


def hh_query(messages):
    return "".join(f"\n\n{'Human' if m['role'] == 'user' else 'Assistant'}: {m['content']}" for m in messages) + \
        "\n\nAssistant:"


# ------------------------------------------------------------------------------------------------------------------
# round trips
# ------------------------------------------------------------------------------------------------------------------
def test_trl_strings_round_trip_from_a_json_list(tmp_path):
    rows = [{"id": p.prompt_id, "prompt": p.messages[-1]["content"], "chosen": p.chosen, "rejected": p.rejected}
            for p in PAIRS[:1]]
    path = write(tmp_path / "trl.json", rows)
    assert detect_format(read_rows(path)[0]) == "trl"
    records = load(path)
    assert canonical(records) == canonical(PAIRS[:1]) and records[0].prompt_id == "p1"


def test_trl_chat_messages_round_trip_explicit_and_implicit_prompt(tmp_path):
    explicit = [{"prompt": p.messages, "chosen": [{"role": "assistant", "content": p.chosen}],
                 "rejected": [{"role": "assistant", "content": p.rejected}]} for p in PAIRS]
    implicit = [{"chosen": p.messages + [{"role": "assistant", "content": p.chosen}],
                 "rejected": p.messages + [{"role": "assistant", "content": p.rejected}]} for p in PAIRS]
    assert canonical(load(write(tmp_path / "explicit.jsonl", explicit))) == canonical(PAIRS)
    assert canonical(load(write(tmp_path / "implicit.jsonl", implicit))) == canonical(PAIRS)


def test_trl_parquet_file_round_trips(tmp_path):
    pd = pytest.importorskip("pandas")
    path = tmp_path / "trl.parquet"
    pd.DataFrame([{"prompt": p.messages[-1]["content"], "chosen": p.chosen, "rejected": p.rejected}
                  for p in PAIRS[:1]]).to_parquet(path)
    assert canonical(load(str(path))) == canonical(PAIRS[:1])


def test_hh_dialogues_round_trip_with_earlier_turns_in_the_prompt(tmp_path):
    rows = [{"chosen": hh_dialogue(p.messages, p.chosen), "rejected": hh_dialogue(p.messages, p.rejected)}
            for p in PAIRS]
    path = write(tmp_path / "hh.jsonl", rows)
    assert detect_format(read_rows(path)[0]) == "hh"
    records = load(path)
    assert canonical(records) == canonical(PAIRS)
    assert records[1].prompt_id == "hh.jsonl:2"  # no id field: file name and row


def test_apo_text_scores_round_trip_every_differently_scored_pair_best_first(tmp_path):
    query = hh_query(SINGLE)
    responses, scores = ["Paris.", "Lyon.", "I do not know.", "Paris!"], [2.0, 0.5, -1.0, 2.0]
    path = write(tmp_path / "apo_pref.jsonl", [{"text": [f"{query}<sep>{r}" for r in responses], "scores": scores}])
    assert detect_format(read_rows(path)[0]) == "apo_text_scores"
    records = load(path)
    assert all(r.messages == SINGLE for r in records)
    assert [(r.chosen, r.rejected) for r in records] == [
        ("Paris.", "Lyon."), ("Paris.", "I do not know."), ("Paris!", "Lyon."), ("Paris!", "I do not know."),
        ("Lyon.", "I do not know."),
    ]  # the tie Paris./Paris! is no preference


def test_apo_golden_and_samples_files_round_trip_into_prompts_with_gold_and_samples(tmp_path):
    expected = [PromptExample("7", SINGLE, gold="Paris.", samples=["Lyon.", "Paris, I think."]),
                PromptExample("8", MULTI, gold=None, samples=["Use eggs.", "No idea."])]
    samples_rows = [{"query_id": int(e.prompt_id), "query": hh_query(e.messages),
                     **{f"sample_{i}": s for i, s in enumerate(e.samples)}} for e in expected]
    # the reference converter's made-up next turn is cut from gold answers and samples
    samples_rows[0]["sample_1"] += "\nHuman: and Germany?"
    gold_rows = [{"query_id": 7, "golden": "Paris.\n\nHuman: thanks"}]
    samples = write(tmp_path / "samples.jsonl", samples_rows)
    golden = write(tmp_path / "golden.json", gold_rows)
    assert detect_format(read_rows(samples)[0]) == "apo_samples"
    assert detect_format(read_rows(golden)[0]) == "apo_golden"
    task = load_task_data(DataConfig(dataset_name=samples, gold_file=golden, seed_buffer_from_samples=True))
    assert task.train_prompts == expected


def test_offline_samples_seed_the_buffer_for_gold_annotated_prompts_only():
    class Encoder:
        def response_ids(self, text):
            return [len(text), 0]

    from apo_online.data.canonical import EncodedPrompt

    examples = [PromptExample("a", SINGLE, gold="g", samples=["xx", "yyy"]),
                PromptExample("b", SINGLE, samples=["zzzz"])]
    prompts = [EncodedPrompt(0, [1], gold_ids=[5, 0]), EncodedPrompt(1, [1], gold_ids=None)]
    buffer = SampleBuffer(capacity=8)
    assert buffer.add_offline_samples(Encoder(), prompts, examples) == 2
    assert buffer.groups() == {0: [[2, 0], [3, 0]]}


def test_preference_file_gives_prompts_one_per_row_with_the_best_response_as_gold(tmp_path):
    query = hh_query(SINGLE)
    path = write(tmp_path / "prefs.jsonl", [{"text": [f"{query}<sep>Paris.", f"{query}<sep>Rome."], "scores": [1, 0]}])
    task = load_task_data(DataConfig(dataset_name=path))
    assert [(p.messages, p.gold) for p in task.train_prompts] == [(SINGLE, "Paris.")]
    assert canonical(task.preference_pairs) == [(SINGLE, "Paris.", "Rome.")]


# ------------------------------------------------------------------------------------------------------------------
# errors name the file, the row and the field
# ------------------------------------------------------------------------------------------------------------------
Q = hh_query(SINGLE)
GOOD_HH = {"chosen": hh_dialogue(SINGLE, "Paris."), "rejected": hh_dialogue(SINGLE, "Rome.")}
GOOD_APO = {"text": [f"{Q}<sep>Paris.", f"{Q}<sep>Rome."], "scores": [1.0, 0.0]}


@pytest.mark.parametrize("fmt, bad_row, field, message", [
    ("hh", {"chosen": hh_dialogue(SINGLE, "Paris."), "rejected": "\n\nHuman: other?\n\nAssistant: Rome."},
     "rejected", "differ from those of 'chosen'"),
    ("hh", {"chosen": "\n\nHuman: only a question", "rejected": GOOD_HH["rejected"]}, "chosen", "no '\\\\n\\\\nAssistant:'"),
    ("hh", {"chosen": hh_dialogue(SINGLE, "Paris.") + "\n\nHuman: sure?", "rejected": GOOD_HH["rejected"]},
     "chosen", "must end with an assistant turn"),
    ("hh", {"chosen": "preamble" + GOOD_HH["chosen"], "rejected": GOOD_HH["rejected"]}, "chosen", "text before"),
    ("apo_text_scores", {"text": [f"{Q} Paris.", f"{Q}<sep>Rome."], "scores": [1, 0]}, "text[0]", "one '<sep>'"),
    ("apo_text_scores", {"text": GOOD_APO["text"], "scores": [1.0]}, "scores", "list of 2 numbers"),
    ("apo_text_scores", {"text": GOOD_APO["text"], "scores": [1.0, "high"]}, "scores[1]", "expected a number"),
    ("apo_text_scores", {"text": GOOD_APO["text"], "scores": [1.0, 1.0]}, "scores", "same score"),
    ("apo_text_scores", {"text": [GOOD_APO["text"][0], "\n\nHuman: other\n\nAssistant:<sep>x"], "scores": [1, 0]},
     "text[1]", "query differs"),
    ("apo_text_scores", dict(GOOD_APO, type="apo"), "type", "not a human preference"),
    ("apo_golden", {"query_id": 1.5, "golden": "x"}, "query_id", "string or an integer"),
    ("apo_golden", {"query_id": 2, "golden": ""}, "golden", "empty string"),
    ("apo_samples", {"query_id": 3, "query": Q, "sample_0": "ok", "sample_1": 4}, "sample_1", "expected a string"),
    ("apo_samples", {"query_id": 3, "query": "\n\nHuman: hi"}, "query", "must end with an empty"),
    ("apo_samples", {"query_id": 3, "query": "", "sample_0": "ok"}, "query", "empty string"),
    ("apo_samples", {"query_id": 3, "query": Q, "sample_0": None}, "sample_0", "missing"),
])
def test_bad_rows_of_every_format_name_file_row_and_field(tmp_path, fmt, bad_row, field, message):
    good = {"hh": GOOD_HH, "apo_text_scores": GOOD_APO, "apo_golden": {"query_id": 1, "golden": "g"},
            "apo_samples": {"query_id": 1, "query": Q, "sample_0": "s"}}[fmt]
    path = write(tmp_path / f"{fmt}.jsonl", [good, bad_row])
    with pytest.raises(DataFormatError) as info:
        load(path, fmt)
    err = info.value
    assert (err.source, err.row, err.field) == (path, 2, field)
    assert str(err).startswith(f"{path}, row 2, field {field!r}: ")
    assert re.search(re.escape(message) if "\\" not in message else message, str(err)), str(err)


def test_gold_file_with_duplicate_or_unknown_query_ids_is_refused(tmp_path):
    samples = write(tmp_path / "samples.jsonl", [{"query_id": 1, "query": Q, "sample_0": "a"},
                                                 {"query_id": 2, "query": Q, "sample_0": "b"}])
    duplicate = write(tmp_path / "dup_gold.jsonl", [{"query_id": 1, "golden": "x"}, {"query_id": 2, "golden": "y"},
                                                    {"query_id": "1", "golden": "z"}])
    with pytest.raises(DataFormatError, match=r"dup_gold.jsonl, row 3, field 'query_id': duplicate query_id '1' "
                                              r"\(first at row 1\)"):
        load_task_data(DataConfig(dataset_name=samples, gold_file=duplicate))
    unknown = write(tmp_path / "unknown_gold.jsonl", [{"query_id": 1, "golden": "x"}, {"query_id": 9, "golden": "y"}])
    with pytest.raises(DataFormatError, match=r"unknown_gold.jsonl, row 2, field 'query_id': query_id '9' matches no "
                                              r"prompt id"):
        load_task_data(DataConfig(dataset_name=samples, gold_file=unknown))
    # with skip_bad_rows both are skipped and counted, the good gold is kept
    task = load_task_data(DataConfig(dataset_name=samples, gold_file=duplicate, skip_bad_rows=True))
    assert task.skipped_rows == 1 and [p.gold for p in task.train_prompts] == ["x", "y"]


def test_duplicate_query_ids_in_the_prompts_are_refused_when_gold_is_joined_by_id(tmp_path):
    samples = write(tmp_path / "samples.jsonl", [{"query_id": 1, "query": Q, "sample_0": "a"},
                                                 {"query_id": 1, "query": Q, "sample_0": "b"}])
    golden = write(tmp_path / "golden.jsonl", [{"query_id": 1, "golden": "x"}])
    with pytest.raises(DataFormatError, match=r"samples.jsonl, row 2, field 'query_id': duplicate prompt id '1' "
                                              r"\(first at row 1\)"):
        load_task_data(DataConfig(dataset_name=samples, gold_file=golden))


def test_golden_file_given_as_the_dataset_is_refused_with_a_hint(tmp_path):
    golden = write(tmp_path / "golden.jsonl", [{"query_id": 1, "golden": "x"}])
    with pytest.raises(DataFormatError, match="give it as data.gold_file"):
        load_task_data(DataConfig(dataset_name=golden))


# ------------------------------------------------------------------------------------------------------------------
# empty responses load as the stop token alone; empty prompts and gold answers do not
# ------------------------------------------------------------------------------------------------------------------
def test_empty_samples_load_as_empty_responses_and_are_counted(tmp_path):
    rows = [{"query_id": 1, "query": Q, "sample_0": "Paris.", "sample_1": "", "sample_2": "   ",
             "sample_3": "\nHuman: and Rome?"},  # the last is nothing but a made-up next turn
            {"query_id": 2, "query": Q, "sample_0": ""}]
    samples = write(tmp_path / "samples.jsonl", rows)
    golden = write(tmp_path / "golden.jsonl", [{"query_id": 1, "golden": "Paris."}])
    task = load_task_data(DataConfig(dataset_name=samples, gold_file=golden))
    assert [p.samples for p in task.train_prompts] == [["Paris.", "", "", ""], [""]]
    assert task.skipped_rows == 0 and task.empty_responses() == 4

    class Encoder:  # the game's PromptEncoder tokenises "" as [] and appends the stop token
        def response_ids(self, text):
            return ([7] if text else []) + [0]

    from apo_online.data.canonical import EncodedPrompt

    buffer = SampleBuffer(capacity=8)
    buffer.add_offline_samples(Encoder(), [EncodedPrompt(0, [1], gold_ids=[5, 0])], task.train_prompts[:1])
    assert buffer.groups() == {0: [[7, 0], [0], [0], [0]]}


@pytest.mark.parametrize("fmt, row", [
    ("hh", {"chosen": hh_dialogue(SINGLE, "Paris."), "rejected": hh_query(SINGLE)}),
    ("apo_text_scores", {"text": [f"{Q}<sep>Paris.", f"{Q}<sep> "], "scores": [1.0, 0.0]}),
    ("trl", {"prompt": "What is the capital of France?", "chosen": "Paris.", "rejected": ""}),
])
def test_empty_rejected_responses_load_where_the_format_allows_them(tmp_path, fmt, row):
    path = write(tmp_path / f"{fmt}.jsonl", [row])
    [pair] = load(path, fmt)
    assert (pair.messages, pair.chosen, pair.rejected) == (SINGLE, "Paris.", "")


def test_a_task_left_without_prompts_says_how_many_rows_were_skipped_and_why(tmp_path):
    rows = [{"query_id": i, "query": "", "sample_0": "a"} for i in range(3)] + [{"query_id": 9, "query": Q}]
    samples = write(tmp_path / "samples.jsonl", rows[:3])
    with pytest.raises(DataFormatError) as info:
        load_task_data(DataConfig(dataset_name=samples, skip_bad_rows=True))
    assert str(info.value) == (f"{samples}: no usable prompts: 3 rows skipped (data.skip_bad_rows): 3 x field 'query': "
                               f"empty string (first: {samples}, row 1)")
