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

Versions, each loadable by name (data.dataset_name embedded_judged_<version>; plain embedded_judged is v2, the
study's): v1 had 3 samples per temperature, and the judge preferred gold to a reference sample on only 0.785 of the
probe's policy prompts, under the 0.8 that APO's premise asks here; v2 has 8 (16 samples and the human replies per
query). v3 is v2 plus judge-labelled pairs of reference samples on the RM-split prompts as RM pairs
(judged_pairs.py): v2's RM pairs are off the policy's distribution, and the best-of-n probe found its base RM a weak
selector. Generation is the expensive part (16 samples for each of the recipes' 298 policy and eval queries: 41 min on
2 CPU cores, partly shared with tests; a minute or two on a GPU); it is cached and shipped (reference_samples.py), so
the default run generates nothing. `python -m apo_online.testbeds.judged_task --model NAME --version V` builds it
ahead of a run.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import logging
from dataclasses import dataclass

from apo_online.assets import cache_root, file_lock
from apo_online.config import DataConfig, ModelConfig
from apo_online.data.canonical import PreferencePair, PromptExample, TaskData
from apo_online.testbeds.embedded import build_embedded_task
from apo_online.testbeds.gold_judge import JUDGE_VERSION, load_gold_judge, question_text
from apo_online.testbeds.judged_pairs import build_sample_pairs, missing_pair_prompts
from apo_online.testbeds.reference_samples import (CANDIDATE_MAX_NEW_TOKENS, GENERATION_BATCH, MAX_PROMPT_TOKENS,
                                                   SHIPPED, SYSTEM_PROMPT, batch_seed, build_cached, cached_file,
                                                   sample_texts, save_atomically)

__all__ = ["GENERATION_BATCH", "SHIPPED", "build_judged_task", "cache_path", "missing_queries", "sample_candidates"]

TESTBED_VERSION = "v2"  # what data.dataset_name embedded_judged builds (the study's testbed)
# Every version stays loadable by name (data.dataset_name): v1's candidates were 3 samples per temperature (the judge
# preferred gold to a reference sample on only 0.785 of the probe's policy prompts); v2 the same with 8; v3 is v2 plus
# the RM pairs of judged_pairs.py (judge-labelled pairs of reference samples on the RM-split prompts).
# candidates: the version whose candidate file it uses (v3 adds RM pairs to v2's candidates, sampled once).
VERSIONS = {"v1": {"candidates": "v1", "per_temperature": 3, "sample_pairs": False},
            "v2": {"candidates": "v2", "per_temperature": 8, "sample_pairs": False},
            "v3": {"candidates": "v2", "per_temperature": 8, "sample_pairs": True}}
DATASET_VERSIONS = {"embedded_judged": TESTBED_VERSION} | {f"embedded_judged_{v}": v for v in VERSIONS}
TEMPERATURES = (0.7, 1.0)
SAMPLES_PER_TEMPERATURE = VERSIONS[TESTBED_VERSION]["per_temperature"]
RECIPE_MAX_PROMPTS = 192  # data.max_prompts of the recipes on this testbed: what the shipped build covers
LABELS_FILE = f"judge-labels-{JUDGE_VERSION}.json"  # pair content hash -> the judge prefers the rejected one


@dataclass
class Candidates:
    texts: list[str]  # human replies first, then distinct reference samples
    judge_scores: list[float]
    human: int  # how many of texts are human replies

    def best(self) -> str:
        return self.texts[max(range(len(self.texts)), key=self.judge_scores.__getitem__)]


def _settings(version: str = TESTBED_VERSION) -> list:
    return [VERSIONS[version]["candidates"], JUDGE_VERSION, TEMPERATURES, VERSIONS[version]["per_temperature"],
            CANDIDATE_MAX_NEW_TOKENS, SYSTEM_PROMPT, MAX_PROMPT_TOKENS]


def cache_path(model_name: str, cache_dir: str | None = None, version: str = TESTBED_VERSION):
    key = hashlib.sha256(json.dumps([model_name] + _settings(version)).encode()).hexdigest()[:16]
    return cache_root(cache_dir) / f"judged-task-{VERSIONS[version]['candidates']}-{key}.json"


def sample_candidates(model, tokenizer, questions: list[str], seed: int,
                      per_temperature: int = SAMPLES_PER_TEMPERATURE) -> list[list[str]]:
    """Reference samples for each question, per_temperature at each of TEMPERATURES."""
    return sample_texts(model, tokenizer, questions, seed, TEMPERATURES, per_temperature)


def build_candidates(model_config, queries: dict[str, list[str]], judge, version: str = TESTBED_VERSION
                     ) -> dict[str, Candidates]:
    """question -> Candidates for every question of `queries` (question -> human replies), from the cache, sampling
    and judging only the questions it lacks (reference_samples.build_cached). judge: () -> the gold judge, called
    only when something is missing."""
    per_temperature = VERSIONS[version]["per_temperature"]

    def make_batch(batch: list[str], model, tokenizer) -> dict:
        sampled = sample_candidates(model, tokenizer, batch, batch_seed(batch), per_temperature)
        return {q: _judged(q, queries[q], s, judge()) for q, s in zip(batch, sampled)}

    path = cache_path(model_config.model_name_or_path, model_config.cache_dir, version)
    cached = build_cached(model_config, path, list(queries), make_batch, f"testbed {version} candidates")
    return {q: Candidates(**cached[q]) for q in queries}


def _judged(question: str, humans: list[str], sampled: list[str], judge) -> dict:
    texts = list(humans) + [s for s in dict.fromkeys(sampled) if s not in humans]
    return {"texts": texts, "judge_scores": judge.score([question] * len(texts), texts).tolist(),
            "human": len(humans)}


def _pair_key(pair: PreferencePair) -> str:
    content = json.dumps([question_text(pair.messages), pair.chosen, pair.rejected])
    return hashlib.sha256(content.encode()).hexdigest()[:16]


def judge_labelled(pairs: list[PreferencePair], judge, cache_dir: str | None = None) -> list[PreferencePair]:
    """The pairs with chosen and rejected swapped wherever the judge prefers the rejected one (ties kept as built).
    The judge's verdicts are cached by pair content (LABELS_FILE, shipped for the embedded task's pairs), so a run
    needs the judge (judge: () -> it) only for pairs never labelled before."""
    path = cache_root(cache_dir) / LABELS_FILE
    keys = [_pair_key(p) for p in pairs]
    with file_lock(path.with_suffix(".lock")):
        swapped = cached_file(path)
        missing = [(k, p) for k, p in zip(keys, pairs) if k not in swapped]
        if missing:
            questions = [question_text(p.messages) for _, p in missing]
            chosen = judge().score(questions, [p.chosen for _, p in missing]).tolist()
            rejected = judge().score(questions, [p.rejected for _, p in missing]).tolist()
            swapped.update({k: r > c for (k, _), c, r in zip(missing, chosen, rejected)})
            save_atomically(path, swapped)
    return [PreferencePair(p.prompt_id, p.messages, p.rejected, p.chosen) if swapped[k] else p
            for k, p in zip(keys, pairs)]


def _queries(base: TaskData, data_config) -> dict[str, list[str]]:
    """question -> human replies of the prompts a run can use: the first data.max_prompts policy prompts and every
    eval prompt."""
    policy = base.train_prompts[: data_config.max_prompts] if data_config.max_prompts else base.train_prompts
    return {question_text(p.messages): p.references for p in base.eval_prompts + policy}


def missing_queries(model_config, data_config, seed: int = 0) -> int:
    """How many of a run's queries the cached (or shipped) testbed lacks: what a run would sample first (with v3,
    also the RM-split prompts that lack their sample pairs)."""
    version = DATASET_VERSIONS.get(data_config.dataset_name, TESTBED_VERSION)
    base = build_embedded_task(seed)
    cached = cached_file(cache_path(model_config.model_name_or_path, model_config.cache_dir, version))
    missing = sum(q not in cached for q in _queries(base, data_config))
    if VERSIONS[version]["sample_pairs"]:
        missing += missing_pair_prompts(model_config, base.preference_pairs)
    return missing


def build_judged_task(model_config, data_config, seed: int = 0, judge=None, version: str | None = None) -> TaskData:
    """The embedded task relabelled by the judge (module docstring), as testbed `version` (default: the one
    data.dataset_name names). Candidates are built only for the prompts a run can use: the first data.max_prompts
    policy prompts and every eval prompt; v3's sample pairs for every RM-split prompt."""
    version = version or DATASET_VERSIONS.get(data_config.dataset_name, TESTBED_VERSION)
    base = build_embedded_task(seed)
    policy = base.train_prompts[: data_config.max_prompts] if data_config.max_prompts else base.train_prompts
    judge_once = functools.cache(lambda: judge or load_gold_judge(cache_dir=model_config.cache_dir))
    candidates = build_candidates(model_config, _queries(base, data_config), judge_once, version)
    label = lambda pairs: judge_labelled(pairs, judge_once, model_config.cache_dir)  # noqa: E731
    with_gold = lambda prompts: [PromptExample(p.prompt_id, p.messages,  # noqa: E731
                                               gold=candidates[question_text(p.messages)].best(),
                                               references=list(p.references)) for p in prompts]
    rm_pairs = label(base.preference_pairs)
    if VERSIONS[version]["sample_pairs"]:
        rm_pairs += build_sample_pairs(model_config, base.preference_pairs, judge_once)
    return TaskData(train_prompts=with_gold(policy), preference_pairs=rm_pairs,
                    eval_prompts=with_gold(base.eval_prompts), eval_preference_pairs=label(base.eval_preference_pairs),
                    judge_pairs=base.judge_pairs)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Build (and cache) the judge-labelled testbed for a base model.")
    parser.add_argument("--model", default="smollm2-135m-instruct", help="built-in name, folder or hub name")
    parser.add_argument("--cache_dir", default=None, help="default: $APO_ONLINE_CACHE or ~/.cache/apo_online")
    parser.add_argument("--max_prompts", type=int, default=RECIPE_MAX_PROMPTS,
                        help="policy prompts to build (data.max_prompts of the recipes); 0: all of them")
    parser.add_argument("--version", choices=sorted(VERSIONS), default=TESTBED_VERSION,
                        help=f"testbed version (data.dataset_name embedded_judged_<version>; default "
                        f"{TESTBED_VERSION})")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    task = build_judged_task(ModelConfig(model_name_or_path=args.model, cache_dir=args.cache_dir),
                             DataConfig(max_prompts=args.max_prompts or None), version=args.version)
    print(f"testbed {args.version}: {len(task.train_prompts)} policy prompts, {len(task.preference_pairs)} RM pairs, "
          f"{len(task.eval_prompts)} eval prompts, {len(task.eval_preference_pairs)} eval pairs; candidates cached in "
          f"{cache_path(args.model, args.cache_dir, args.version)}")


if __name__ == "__main__":
    main()
