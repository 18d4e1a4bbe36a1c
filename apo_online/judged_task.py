"""The judge-labelled testbed, `data.dataset_name: embedded_judged`: a task on which APO's premise holds.

APO pushes the RM to score gold responses above the policy's own samples. That only helps if gold really is better.
On the plain embedded task the hidden judge prefers the reference policy's samples to the human (chatterbot) replies
about 72% of the time, so there APO pushes the RM away from what the judge rewards. This testbed applies the
synthetic-labelling protocol of Gao et al. 2022 (Scaling Laws for Reward Model Overoptimization): the hidden gold
judge (gold_judge.py) plays the annotator.

  policy / eval prompts:  candidates(q) = q's human replies + SAMPLES_PER_TEMPERATURE reference-policy samples (the
                          run's base model, adapters off, recipe prompt format, CANDIDATE_MAX_NEW_TOKENS) at each of
                          TEMPERATURES; gold(q) = the candidate the judge scores highest (the best of n, as a
                          rejection-sampling annotator would pick); the human replies stay as references
  rm / eval pairs:        the embedded task's pairs (a human reply vs a degraded one) labelled by the judge: chosen is
                          the one the judge prefers (it disagrees with the construction on about 12% of them)
  judge pairs:            untouched: the judge learns only from its own split, so the trained RM never sees the judge
                          or its queries; the judge reaches the RM only through these labels.
A sample cut at max_new_tokens can win: the judge reads text and likes content, and on 48 probe prompts restricting
gold to samples that had stopped left the premise at 0.55-0.61, against 0.83-0.92 with every sample. Gold is encoded
like every gold response (text, then the stop token); the APO step's rm.eos_only guard keeps the stop token from
being what separates gold from the policy's samples.

SAMPLES_PER_TEMPERATURE is 8 (16 samples and the human replies per query): with 3 (testbed v1) the judge preferred
gold to a reference sample on only 0.785 of the probe's policy prompts, under the 0.8 that APO's premise asks here;
a best of more candidates is a better gold. Generation is the expensive part (16 samples for each of the recipes'
298 policy and eval queries: 41 min on 2 CPU cores, partly shared with tests; a minute or two on a GPU). Candidates are cached per query in one file per (base model, settings), keyed by a content hash,
next to the judge (~/.cache/apo_online or $APO_ONLINE_CACHE), and only missing queries are ever generated, under a
file lock so that the processes of one launch build it once. The file for smollm2-135m-instruct ships with the
package (apo_online/testbeds/), so the default run does not generate it. `python -m apo_online.judged_task --model
NAME` builds it ahead of a run.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from apo_online.assets import cache_root, file_lock
from apo_online.config import DataConfig, ModelConfig
from apo_online.data import PreferencePair, PromptEncoder, PromptExample, TaskData, left_pad
from apo_online.embedded import build_embedded_task
from apo_online.gold_judge import JUDGE_VERSION, load_gold_judge, question_text
from apo_online.model_loading import load_causal_lm

TESTBED_VERSION = "v2"  # bump when the candidates, their labelling or the settings below change: part of the key
TEMPERATURES = (0.7, 1.0)
SAMPLES_PER_TEMPERATURE = 8
CANDIDATE_MAX_NEW_TOKENS = 24
# The prompt format the candidates are sampled with (the recipes' own): fixed, so that the testbed is one dataset
# per base model whatever a run's data settings are.
SYSTEM_PROMPT = "Answer in one short sentence."
MAX_PROMPT_TOKENS = 64
GENERATION_BATCH = 32  # prompts per generate call
RECIPE_MAX_PROMPTS = 192  # data.max_prompts of the recipes on this testbed: what the shipped build covers
SHIPPED = Path(__file__).parent / "testbeds"  # prebuilt candidate and label files, named as in the cache
LABELS_FILE = f"judge-labels-{JUDGE_VERSION}.json"  # pair content hash -> the judge prefers the rejected one


@dataclass
class Candidates:
    texts: list[str]  # human replies first, then distinct reference samples
    judge_scores: list[float]
    human: int  # how many of texts are human replies

    def best(self) -> str:
        return self.texts[max(range(len(self.texts)), key=self.judge_scores.__getitem__)]


def _settings() -> list:
    return [TESTBED_VERSION, JUDGE_VERSION, TEMPERATURES, SAMPLES_PER_TEMPERATURE, CANDIDATE_MAX_NEW_TOKENS,
            SYSTEM_PROMPT, MAX_PROMPT_TOKENS]


def cache_path(model_name: str, cache_dir: str | None = None):
    key = hashlib.sha256(json.dumps([model_name] + _settings()).encode()).hexdigest()[:16]
    return cache_root(cache_dir) / f"judged-task-{TESTBED_VERSION}-{key}.json"


@torch.no_grad()
def sample_candidates(model, tokenizer, questions: list[str], seed: int) -> list[list[str]]:
    """Reference samples for each question (cut at the stop token), SAMPLES_PER_TEMPERATURE at each temperature;
    one generate call per temperature, so pass at most GENERATION_BATCH questions."""
    encoder = PromptEncoder(tokenizer, MAX_PROMPT_TOKENS, "truncate", CANDIDATE_MAX_NEW_TOKENS, SYSTEM_PROMPT)
    prompt_ids = [encoder.prompt_ids([{"role": "user", "content": q}]) for q in questions]
    device, n = next(model.parameters()).device, SAMPLES_PER_TEMPERATURE
    ids, mask = (t.to(device) for t in left_pad(prompt_ids, tokenizer.pad_token_id))
    out: list[list[str]] = [[] for _ in questions]
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)  # building the testbed must not shift a game's random stream
    try:
        for temperature in TEMPERATURES:
            sequences = model.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=temperature,
                                       top_k=None, max_new_tokens=CANDIDATE_MAX_NEW_TOKENS, num_return_sequences=n,
                                       pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
            for row, response in enumerate(sequences[:, ids.shape[1]:].tolist()):
                if tokenizer.eos_token_id in response:
                    response = response[: response.index(tokenizer.eos_token_id)]
                text = tokenizer.decode(response, skip_special_tokens=True).strip()
                if text:
                    out[row // n].append(text)
    finally:
        torch.random.set_rng_state(generator_state)
    return out


def build_candidates(model_config, queries: dict[str, list[str]], judge: Callable) -> dict[str, Candidates]:
    """question -> Candidates for every question of `queries` (question -> human replies): from the cache, sampling
    and judging only the questions it lacks, GENERATION_BATCH at a time, each batch saved as soon as it is done
    (an interrupted build resumes where it stopped). judge: () -> the gold judge, called only when something is
    missing."""
    path = cache_path(model_config.model_name_or_path, model_config.cache_dir)
    with file_lock(path.with_suffix(".lock")):
        cached = _cached_candidates(path)
        missing = [q for q in queries if q not in cached]
        if missing:
            logging.getLogger(__name__).warning(
                "building the judge-labelled testbed for %d queries (one-off, cached in %s): sampling %d candidates "
                "per query from %s", len(missing), path, len(TEMPERATURES) * SAMPLES_PER_TEMPERATURE,
                model_config.model_name_or_path)
            model, tokenizer = load_causal_lm(model_config)
            model.to("cuda" if torch.cuda.is_available() else "cpu").eval()
            for start in tqdm(range(0, len(missing), GENERATION_BATCH), desc="testbed candidates"):
                batch = missing[start: start + GENERATION_BATCH]
                seed = int(hashlib.sha256("\n".join(batch).encode()).hexdigest()[:8], 16)
                sampled = sample_candidates(model, tokenizer, batch, seed)
                cached.update({q: _judged(q, queries[q], s, judge()) for q, s in zip(batch, sampled)})
                tmp = path.with_suffix(".tmp")
                tmp.write_text(json.dumps(cached, ensure_ascii=False), encoding="utf-8")
                tmp.rename(path)
    return {q: Candidates(**cached[q]) for q in queries}


def _judged(question: str, humans: list[str], sampled: list[str], judge) -> dict:
    texts = list(humans) + [s for s in dict.fromkeys(sampled) if s not in humans]
    return {"texts": texts, "judge_scores": judge.score([question] * len(texts), texts).tolist(),
            "human": len(humans)}


def _pair_key(pair: PreferencePair) -> str:
    content = json.dumps([question_text(pair.messages), pair.chosen, pair.rejected])
    return hashlib.sha256(content.encode()).hexdigest()[:16]


def judge_labelled(pairs: list[PreferencePair], judge: Callable, cache_dir: str | None = None) -> list[PreferencePair]:
    """The pairs with chosen and rejected swapped wherever the judge prefers the rejected one (ties kept as built).
    The judge's verdicts are cached by pair content (LABELS_FILE, shipped for the embedded task's pairs), so a run
    needs the judge (judge: () -> it) only for pairs never labelled before."""
    path = cache_root(cache_dir) / LABELS_FILE
    keys = [_pair_key(p) for p in pairs]
    with file_lock(path.with_suffix(".lock")):
        source = path if path.is_file() else SHIPPED / LABELS_FILE
        swapped = json.loads(source.read_text(encoding="utf-8")) if source.is_file() else {}
        missing = [(k, p) for k, p in zip(keys, pairs) if k not in swapped]
        if missing:
            questions = [question_text(p.messages) for _, p in missing]
            chosen = judge().score(questions, [p.chosen for _, p in missing]).tolist()
            rejected = judge().score(questions, [p.rejected for _, p in missing]).tolist()
            swapped.update({k: r > c for (k, _), c, r in zip(missing, chosen, rejected)})
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(swapped), encoding="utf-8")
            tmp.rename(path)
    return [PreferencePair(p.prompt_id, p.messages, p.rejected, p.chosen) if swapped[k] else p
            for k, p in zip(keys, pairs)]


def _queries(base: TaskData, data_config) -> dict[str, list[str]]:
    """question -> human replies of the prompts a run can use: the first data.max_prompts policy prompts and every
    eval prompt."""
    policy = base.train_prompts[: data_config.max_prompts] if data_config.max_prompts else base.train_prompts
    return {question_text(p.messages): p.references for p in base.eval_prompts + policy}


def _cached_candidates(path: Path) -> dict:
    """The candidates cached at `path`, else the shipped build of that name (the default model's), else none."""
    source = path if path.is_file() else SHIPPED / path.name
    return json.loads(source.read_text(encoding="utf-8")) if source.is_file() else {}


def missing_queries(model_config, data_config, seed: int = 0) -> int:
    """How many of a run's queries the cached (or shipped) testbed lacks: what a run would sample first."""
    cached = _cached_candidates(cache_path(model_config.model_name_or_path, model_config.cache_dir))
    return sum(q not in cached for q in _queries(build_embedded_task(seed), data_config))


def build_judged_task(model_config, data_config, seed: int = 0, judge=None) -> TaskData:
    """The embedded task relabelled by the judge (module docstring). Candidates are built only for the prompts a run
    can use: the first data.max_prompts policy prompts and every eval prompt."""
    base = build_embedded_task(seed)
    policy = base.train_prompts[: data_config.max_prompts] if data_config.max_prompts else base.train_prompts
    judge_once = functools.cache(lambda: judge or load_gold_judge(cache_dir=model_config.cache_dir))
    candidates = build_candidates(model_config, _queries(base, data_config), judge_once)
    label = lambda pairs: judge_labelled(pairs, judge_once, model_config.cache_dir)  # noqa: E731
    with_gold = lambda prompts: [PromptExample(p.prompt_id, p.messages,  # noqa: E731
                                               gold=candidates[question_text(p.messages)].best(),
                                               references=list(p.references)) for p in prompts]
    return TaskData(train_prompts=with_gold(policy), preference_pairs=label(base.preference_pairs),
                    eval_prompts=with_gold(base.eval_prompts), eval_preference_pairs=label(base.eval_preference_pairs),
                    judge_pairs=base.judge_pairs)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Build (and cache) the judge-labelled testbed for a base model.")
    parser.add_argument("--model", default="smollm2-135m-instruct", help="built-in name, folder or hub name")
    parser.add_argument("--cache_dir", default=None, help="default: $APO_ONLINE_CACHE or ~/.cache/apo_online")
    parser.add_argument("--max_prompts", type=int, default=RECIPE_MAX_PROMPTS,
                        help="policy prompts to build (data.max_prompts of the recipes); 0: all of them")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    task = build_judged_task(ModelConfig(model_name_or_path=args.model, cache_dir=args.cache_dir),
                             DataConfig(max_prompts=args.max_prompts or None))
    print(f"testbed: {len(task.train_prompts)} policy prompts, {len(task.preference_pairs)} RM pairs, "
          f"{len(task.eval_prompts)} eval prompts, {len(task.eval_preference_pairs)} eval pairs; cached in "
          f"{cache_path(args.model, args.cache_dir)}")


if __name__ == "__main__":
    main()
