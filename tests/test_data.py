"""Data: the embedded task, prompt encoding limits, the prompt sampler and the documented row errors."""

import json
import re

import pytest

from apo_online.data.canonical import PromptEncoder, PromptExample, PromptSampler, join_prompt_response
from apo_online.data.formats import DataFormatError, convert_rows, read_rows
from apo_online.data.task import load_task_data
from apo_online.config import DataConfig
from apo_online.testbeds.embedded import build_embedded_task, split_of
from apo_online.model_loading import load_tokenizer


def test_embedded_task_splits_are_disjoint_and_real():
    task = build_embedded_task()
    prompt_text = lambda items: {p.messages[-1]["content"] for p in items}
    train, evals = prompt_text(task.train_prompts), prompt_text(task.eval_prompts)
    rm, judge = prompt_text(task.preference_pairs), prompt_text(task.judge_pairs)
    assert train and evals and rm and judge
    assert not (train & evals) and not (train & rm) and not (rm & judge) and not (evals & judge) and not (train & judge)
    assert all(p.gold for p in task.train_prompts)
    assert all(pair.chosen != pair.rejected for pair in task.preference_pairs)
    assert split_of("What is AI?") == split_of("What is AI?")


def test_prompt_encoder_truncates_or_rejects_long_prompts(tiny_model_path):
    tokenizer = load_tokenizer("tiny-llama")
    long = PromptExample("x", [{"role": "user", "content": "word " * 200}], gold="fine")
    short = PromptExample("y", [{"role": "user", "content": "hi"}], gold="hello")
    encoder = PromptEncoder(tokenizer, max_prompt_tokens=16, prompt_overflow="truncate")
    encoded = encoder.encode_prompts([long, short])
    assert len(encoded) == 2 and len(encoded[0].input_ids) == 16 and encoder.truncated_prompts == 1
    # truncation keeps the end of the prompt: the generation prompt
    assert tokenizer.decode(encoded[0].input_ids).endswith("<|im_start|>assistant\n")
    assert encoded[1].gold_ids[-1] == tokenizer.eos_token_id
    rejecting = PromptEncoder(tokenizer, max_prompt_tokens=16, prompt_overflow="reject")
    assert [e.prompt_index for e in rejecting.encode_prompts([long, short])] == [1]
    assert rejecting.rejected_prompts == 1
    with pytest.raises(ValueError, match=r"no usable prompts: all 1 prompts are longer than data.max_prompt_tokens=4"):
        PromptEncoder(tokenizer, max_prompt_tokens=4, prompt_overflow="reject").encode_prompts([long])


def test_join_prompt_response_pads_prompts_left_and_responses_right():
    ids, mask, prompt_len = join_prompt_response([[1, 2], [3]], [[7], [8, 9]], pad_id=0)
    assert prompt_len == 2
    assert ids.tolist() == [[1, 2, 7, 0], [0, 3, 8, 9]]
    assert mask.tolist() == [[1, 1, 1, 0], [0, 1, 1, 1]]


def test_prompt_sampler_global_batch_does_not_depend_on_process_count():
    single = PromptSampler(20, prompts_per_step=4, seed=3)
    ranks = [PromptSampler(20, prompts_per_step=2, seed=3, rank=r, world_size=2) for r in range(2)]
    for _ in range(12):  # crosses epochs
        global_batch = single.next_batch()
        assert global_batch == ranks[0].next_batch() + ranks[1].next_batch()
        assert len(set(global_batch)) == 4
    clone = PromptSampler(20, 4, seed=3)
    clone.load_state_dict(single.state_dict())
    assert clone.next_batch() == single.next_batch()
    with pytest.raises(ValueError, match="only 3 usable prompts but one step needs 4"):
        PromptSampler(3, prompts_per_step=4, seed=0)


def write_jsonl(path, rows):
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return path


def test_trl_rows_in_every_shape(tmp_path):
    path = write_jsonl(tmp_path / "prefs.jsonl", [
        {"prompt": "Hi?", "chosen": "Hello.", "rejected": "Go away."},
        {"prompt": [{"role": "user", "content": "Hi?"}], "chosen": [{"role": "assistant", "content": "Hello."}],
         "rejected": [{"role": "assistant", "content": "No."}]},
        {"chosen": [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."}],
         "rejected": [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Meh."}]},
    ])
    pairs, skipped = convert_rows(read_rows(str(path)), "auto", skip_bad_rows=False)
    assert skipped == 0
    assert [(p.messages, p.chosen, p.rejected) for p in pairs] == [
        ([{"role": "user", "content": "Hi?"}], "Hello.", "Go away."),
        ([{"role": "user", "content": "Hi?"}], "Hello.", "No."),
        ([{"role": "user", "content": "Hi?"}], "Hello.", "Meh."),
    ]


@pytest.mark.parametrize("content, message", [
    ('{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": "a", "chosen": 5, "rejected": "c"}',
     r"row 2, field 'chosen': expected a string or messages, got int"),
    ('{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": "a", "rejected": "c"}',
     r"row 2, field 'chosen': missing"),
    ('{"prompt": "a", "chosen": "b", "rejected": "c"}\nnot json', r"row 2: invalid JSON"),
    ('{"prompt": [{"role": "user"}], "chosen": "b", "rejected": "c"}', r"row 1, field 'prompt\[0\]': expected a message"),
    ('', r"empty file"),
])
def test_bad_rows_name_file_row_and_field(tmp_path, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataFormatError) as info:
        convert_rows(read_rows(str(path)), "auto", skip_bad_rows=False)
    assert str(info.value).startswith(str(path))
    assert re.search(message, str(info.value)), str(info.value)


def test_non_utf8_and_missing_files(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes('{"prompt": "caf\xe9"}\n'.encode("latin-1"))
    with pytest.raises(DataFormatError, match="not UTF-8"):
        read_rows(str(path))
    with pytest.raises(DataFormatError, match="file not found"):
        read_rows(str(tmp_path / "nope.jsonl"))


def test_skip_bad_rows_counts_them(tmp_path):
    path = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": "a", "gold": "b"}, {"prompt": "", "gold": "b"},
                                                    {"prompt": "c"}])
    task = load_task_data(DataConfig(dataset_name=str(path), skip_bad_rows=True))
    assert [p.messages[0]["content"] for p in task.train_prompts] == ["a", "c"]
    assert task.skipped_rows == 1
    assert task.train_prompts[0].gold == "b" and task.train_prompts[1].gold is None
    with pytest.raises(DataFormatError, match="row 2, field 'prompt': empty string"):
        load_task_data(DataConfig(dataset_name=str(path)))
