"""The offline default task, built from real text shipped by PyPI packages (no hub).

Source: chatterbot-corpus 1.3.3 (English), about 2.3k human-written (utterance, reply) pairs in 21 topics.
Each distinct question becomes one query; its human replies are its acceptable answers. Queries are split by a
stable hash into four disjoint parts:
  rm      (45%)  human preference pairs for the RM warm-up and the beta2 term
  policy  (35%)  policy training prompts; their first human reply is the gold response of the APO RM step
  eval    (10%)  held-out prompts with reference answers (gold-judge scoring, win rates)
  judge   (10%)  preference pairs that only the hidden gold judge may use; the trained RM never sees them
A rejected response is a real reply degraded one of four ways: another topic's reply (off-topic), the reply's
words shuffled (disfluent), cut to its first two words (incomplete), or one word repeated (degenerate).
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator
from pathlib import Path

import yaml

from apo_online.data.canonical import PreferencePair, PromptExample, TaskData
from apo_online.assets import package_dir

SPLIT_SHARES = (("rm", 0.45), ("policy", 0.35), ("eval", 0.10), ("judge", 0.10))


def _corpus_files() -> list[Path]:
    root = package_dir("chatterbot_corpus", "chatterbot-corpus==1.3.3") / "data" / "english"
    files = sorted(root.glob("*.yml"))
    if not files:
        raise FileNotFoundError(f"no chatterbot corpus files under {root}")
    return files


def _clean(text) -> str:
    return " ".join(str(text).split())


def chatterbot_dialogues() -> Iterator[tuple[str, list[str]]]:
    """(topic, utterances) for every conversation of the English corpus."""
    for path in _corpus_files():
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        for conversation in data.get("conversations") or []:
            yield path.stem, [_clean(u) for u in conversation if _clean(u)]


def chatterbot_texts() -> Iterator[str]:
    for _, utterances in chatterbot_dialogues():
        yield from utterances


def question_answers() -> dict[str, tuple[str, list[str]]]:
    """question -> (topic, [human replies]) from consecutive utterance pairs, in corpus order."""
    table: dict[str, tuple[str, list[str]]] = {}
    for topic, utterances in chatterbot_dialogues():
        for question, answer in zip(utterances, utterances[1:]):
            _, answers = table.setdefault(question, (topic, []))
            if answer not in answers:
                answers.append(answer)
    return table


def split_of(question: str) -> str:
    """Stable split from a hash of the question text (independent of corpus order and Python's hash seed)."""
    value = int(hashlib.sha256(question.encode("utf-8")).hexdigest()[:8], 16) / 0xFFFFFFFF
    cumulative = 0.0
    for name, share in SPLIT_SHARES:
        cumulative += share
        if value <= cumulative:
            return name
    return SPLIT_SHARES[-1][0]


def degrade(answer: str, other_topic_answers: list[str], rng: random.Random) -> str:
    """A worse reply: off-topic, shuffled, cut short or degenerate (see the module docstring)."""
    words = answer.split()
    kind = rng.choice(("off_topic", "shuffled", "cut", "repeated"))
    if kind == "shuffled" and len(words) >= 4:
        shuffled = words[:]
        while shuffled == words:
            rng.shuffle(shuffled)
        return " ".join(shuffled)
    if kind == "cut" and len(words) >= 4:
        return " ".join(words[:2])
    if kind == "repeated" and words:
        return " ".join([rng.choice(words)] * max(4, min(len(words), 12)))
    return rng.choice(other_topic_answers)


def build_embedded_task(seed: int = 0) -> TaskData:
    rng = random.Random(seed)
    table = question_answers()
    by_topic: dict[str, list[str]] = {}
    for topic, answers in table.values():
        by_topic.setdefault(topic, []).extend(answers)

    other_topic_answers = {
        topic: [a for other, answers in by_topic.items() if other != topic for a in answers] for topic in by_topic
    }
    prompts: dict[str, list[PromptExample]] = {name: [] for name, _ in SPLIT_SHARES}
    pairs: dict[str, list[PreferencePair]] = {name: [] for name, _ in SPLIT_SHARES}
    for number, (question, (topic, answers)) in enumerate(table.items()):
        prompt_id = f"chatterbot-{number:05d}"
        messages = [{"role": "user", "content": question}]
        split = split_of(question)
        prompts[split].append(PromptExample(prompt_id, messages, gold=answers[0], references=list(answers)))
        if split == "policy":
            continue  # policy prompts contribute gold responses, not preference pairs
        for answer in answers:
            rejected = degrade(answer, other_topic_answers[topic], rng)
            pairs[split].append(PreferencePair(prompt_id, messages, answer, rejected))
    return TaskData(
        train_prompts=prompts["policy"],
        preference_pairs=pairs["rm"],
        eval_prompts=prompts["eval"],
        eval_preference_pairs=pairs["eval"],
        judge_pairs=pairs["judge"],
    )
