"""Converters for Anthropic HH dialogues and for the files of the APO reference repository (github Linear95/APO).

hh               {"chosen": "\\n\\nHuman: q\\n\\nAssistant: a+", "rejected": "\\n\\nHuman: q\\n\\nAssistant: a-"}
                 Full dialogues. The turns before the last "\\n\\nAssistant:" are the prompt (they must be the same in
                 both), the text after it is the response. -> one PreferencePair.
apo_text_scores  {"text": ["<query><sep><response>", ...], "scores": [s_1, ...]}   (the reference repo's preference
                 data; the query is HH-style "\\n\\nHuman: ...\\n\\nAssistant:" and the same in every text)
                 -> a PreferencePair for every two responses with different scores, higher-scored one chosen,
                 best-scored pairs first. Rows with "type": "apo" are rejected: the reference repo's converter makes
                 them from gold answers and LLM samples, they are not human preferences (see apo_golden/apo_samples).
apo_golden       {"query_id": id, "golden": str}   (gold annotations) -> GoldResponse, joined to the prompts by
                 query_id through data.gold_file (task.attach_gold_responses).
apo_samples      {"query_id": id, "query": str, "sample_0": str, ..., "sample_n": str}   (LLM samples of the
                 queries) -> one PromptExample per query, its samples kept in PromptExample.samples. They can seed
                 the RM's sample buffer (data.seed_buffer_from_samples): the first APO updates then compare the gold
                 answers with these samples, as the reference repo's offline APO step does, until fresh policy
                 samples push them out of the FIFO buffer.
Gold answers and samples are cut before any "\\nHuman:" continuation, as the reference repo's converter does.
Responses may be empty (samples, and the chosen / rejected responses of hh and apo_text_scores): they load as ""
and train as the stop token alone (counted in data/empty_responses). Queries and gold answers may not.
A query without any "Human:"/"Assistant:" marker is taken as one user turn.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from apo_online.data.canonical import Messages, PreferencePair, PromptExample
from apo_online.data.rows import Row

HUMAN, ASSISTANT, SEP = "\n\nHuman:", "\n\nAssistant:", "<sep>"
TURN = re.compile(r"\n\n(Human|Assistant):")
SAMPLE_FIELD = re.compile(r"^sample_(\d+)$")


@dataclass
class GoldResponse:
    query_id: str
    golden: str


def hh_turns(row: Row, field: str, text: str) -> Messages:
    """'\\n\\nHuman: a\\n\\nAssistant: b' -> [{'role': 'user', 'content': 'a'}, {'role': 'assistant', 'content': 'b'}]."""
    if text.startswith(("Human:", "Assistant:")):
        text = "\n\n" + text
    parts = TURN.split(text)  # [text before the first turn, role, content, role, content, ...]
    if parts[0].strip():
        raise row.error(field, f"text before the first '\\n\\nHuman:' turn: {parts[0].strip()[:40]!r}")
    return [{"role": "user" if role == "Human" else "assistant", "content": content.strip()}
            for role, content in zip(parts[1::2], parts[2::2])]


def query_messages(row: Row, field: str, query: str) -> Messages:
    """An HH-style query ending with an empty assistant turn -> chat messages ending with the user's turn."""
    if not query.strip():
        raise row.error(field, "empty query")
    if TURN.search(query) is None and not query.lstrip().startswith("Human:"):
        return [{"role": "user", "content": query.strip()}]
    messages = hh_turns(row, field, query.rstrip() if query.rstrip().endswith("Assistant:") else query)
    if not messages or messages[-1]["role"] != "assistant" or messages[-1]["content"]:
        raise row.error(field, "an HH-style query must end with an empty '\\n\\nAssistant:' turn")
    messages = messages[:-1]
    if not messages or messages[-1]["role"] != "user" or not messages[-1]["content"]:
        raise row.error(field, "an HH-style query needs a non-empty '\\n\\nHuman:' turn before its last "
                               "'\\n\\nAssistant:'")
    return messages


def cut_continuation(text: str) -> str:
    """Drop any made-up next user turn ("\\nHuman: ...") from a response, as the reference converter does."""
    return text.split("\nHuman:")[0].strip()


# ------------------------------------------------------------------------------------------------------------------
def _split_dialogue(row: Row, field: str) -> tuple[str, str]:
    """(everything up to and including the last '\\n\\nAssistant:', the response after it)."""
    text = row.text(field)
    if text.startswith("Human:"):
        text = "\n\n" + text
    cut = text.rfind(ASSISTANT)
    if cut < 0:
        raise row.error(field, "no '\\n\\nAssistant:' turn in the dialogue")
    response = text[cut + len(ASSISTANT):]
    if HUMAN in response:
        raise row.error(field, "the dialogue must end with an assistant turn")
    return text[: cut + len(ASSISTANT)], response.strip()  # may be empty: an empty response


def convert_hh(row: Row) -> list[PreferencePair]:
    chosen_prompt, chosen = _split_dialogue(row, "chosen")
    messages = query_messages(row, "chosen", chosen_prompt)  # a malformed 'chosen' is named before any mismatch
    rejected_prompt, rejected = _split_dialogue(row, "rejected")
    if chosen_prompt != rejected_prompt:
        raise row.error("rejected", "its turns before the last assistant turn differ from those of 'chosen'")
    return [PreferencePair(row.record_id(), messages, chosen, rejected)]


def _number_list(row: Row, field: str, length: int) -> list[float]:
    values = row.data.get(field)
    if not isinstance(values, list) or len(values) != length:
        raise row.error(field, f"expected a list of {length} numbers (one per text), got {values!r:.80}")
    for i, value in enumerate(values):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise row.error(f"{field}[{i}]", f"expected a number, got {value!r:.40}")
    return [float(v) for v in values]


def convert_apo_text_scores(row: Row) -> list[PreferencePair]:
    texts = row.data.get("text")
    if not isinstance(texts, list) or len(texts) < 2:
        raise row.error("text", f"expected a list of at least 2 '<query><sep><response>' strings, got {texts!r:.80}")
    scores = _number_list(row, "scores", len(texts))
    if row.data.get("type") == "apo":
        raise row.error("type", "an 'apo' row compares a gold answer with an LLM sample, not a human preference: "
                                "give the golden file as data.gold_file and the samples file as data.dataset_name")
    query, responses = None, []
    for i, text in enumerate(texts):
        if not isinstance(text, str) or text.count(SEP) != 1:
            raise row.error(f"text[{i}]", f"expected one '{SEP}' between query and response, got {text!r:.80}")
        this_query, response = text.split(SEP)
        if query is not None and this_query != query:
            raise row.error(f"text[{i}]", "its query differs from the query of text[0]")
        query = this_query  # the response may be empty: an empty response
        responses.append(response.strip())
    messages = query_messages(row, "text[0]", query)
    order = sorted(range(len(texts)), key=lambda i: -scores[i])  # stable: equal scores keep the file's order
    pairs = [(better, worse) for k, better in enumerate(order) for worse in order[k + 1 :]
             if scores[better] > scores[worse]]
    if not pairs:
        raise row.error("scores", "every response has the same score: no preference to learn")
    return [PreferencePair(row.record_id(), messages, responses[b], responses[w]) for b, w in pairs]


def _query_id(row: Row) -> str:
    value = row.data.get("query_id")
    if value is None:
        raise row.error("query_id", "missing")
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise row.error("query_id", f"expected a string or an integer id, got {type(value).__name__}")
    return str(value)


def convert_apo_golden(row: Row) -> list[GoldResponse]:
    query_id = _query_id(row)
    golden = cut_continuation(row.text("golden"))
    if not golden:
        raise row.error("golden", "empty once cut before its '\\nHuman:' continuation")
    return [GoldResponse(query_id, golden)]


def convert_apo_samples(row: Row) -> list[PromptExample]:
    query_id = _query_id(row)
    messages = query_messages(row, "query", row.text("query"))
    fields = sorted((int(m.group(1)), key) for key in row.data if (m := SAMPLE_FIELD.match(key)))
    # an empty sample (or one that is nothing but a made-up "\nHuman:" turn) is an empty response
    samples = [cut_continuation(row.text(key, allow_empty=True)) for _, key in fields]
    return [PromptExample(query_id, messages, samples=samples)]
