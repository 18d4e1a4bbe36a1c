"""Testbed v3's RM pairs (data.dataset_name embedded_judged_v3): judge-labelled pairs of reference-policy samples on
the RM-split prompts, the way Gao et al. 2022 (section 2) build an RM's training data.

Why: v2's RM pairs are human chatterbot replies against degraded copies of them, off the policy's distribution; the
best-of-n probe (eval/results/bon_probe_2026-12-05) measured the v2 base RM's best-of-16 gain at 0.17 of the judge's,
under the 0.3 a testbed needs before it can tell a better RM from a worse one.

For each RM-split prompt (the queries of the embedded task's RM pairs; never a policy, eval or judge query):
PAIR_SAMPLES reference samples at PAIR_TEMPERATURE (the rollouts' default) in the candidates' prompt format and
length; samples 1-2, 3-4, ... form disjoint pairs (each sample in one pair, so the pairs are independent draws and a
one-pass warm-up stays short), chosen = the one the judge scores higher (equal texts or scores dropped). A
sample cut at the length limit is a pair member like any other and is encoded, as every pair response is, with the
stop token after it: the judge reads text, so the RM learns the judge's view of the text as if it had stopped (what
rm.score_cut_as_stopped scores in a game). Built and cached like the candidates (reference_samples.py), shipped for
smollm2-135m-instruct.
"""

from __future__ import annotations

import hashlib
import json

from apo_online.assets import cache_root
from apo_online.data.canonical import PreferencePair
from apo_online.testbeds.gold_judge import JUDGE_VERSION, question_text
from apo_online.testbeds.reference_samples import (CANDIDATE_MAX_NEW_TOKENS, MAX_PROMPT_TOKENS, SYSTEM_PROMPT,
                                                   batch_seed, build_cached, cached_file, sample_texts)

PAIRS_VERSION = "v3"
PAIR_SAMPLES = 4  # per RM-split prompt: up to 2 pairs each
PAIR_TEMPERATURE = 0.7


def pairs_cache_path(model_name: str, cache_dir: str | None = None):
    settings = [model_name, PAIRS_VERSION, JUDGE_VERSION, PAIR_TEMPERATURE, PAIR_SAMPLES, CANDIDATE_MAX_NEW_TOKENS,
                SYSTEM_PROMPT, MAX_PROMPT_TOKENS]
    key = hashlib.sha256(json.dumps(settings).encode()).hexdigest()[:16]
    return cache_root(cache_dir) / f"judged-pairs-{PAIRS_VERSION}-{key}.json"


def pairs_from_scores(prompt_id: str, messages: list[dict], texts: list[str], scores: list[float]
                      ) -> list[PreferencePair]:
    """Texts 1-2, 3-4, ... of one prompt as pairs, the judge's higher-scored one chosen; equal texts or scores dropped
    (an odd last text is left out)."""
    pairs = []
    for i, j in zip(range(0, len(texts) - 1, 2), range(1, len(texts), 2)):
        if texts[i] == texts[j] or scores[i] == scores[j]:
            continue
        high, low = (i, j) if scores[i] > scores[j] else (j, i)
        pairs.append(PreferencePair(prompt_id, messages, texts[high], texts[low]))
    return pairs


def missing_pair_prompts(model_config, rm_pairs: list[PreferencePair]) -> int:
    """How many prompts of `rm_pairs` the cached (or shipped) sample pairs lack: what a v3 run would sample."""
    cached = cached_file(pairs_cache_path(model_config.model_name_or_path, model_config.cache_dir))
    return len({question_text(p.messages) for p in rm_pairs} - set(cached))


def build_sample_pairs(model_config, rm_pairs: list[PreferencePair], judge) -> list[PreferencePair]:
    """The v3 sample pairs of the prompts of `rm_pairs` (the embedded task's RM split), in prompt order.
    judge: () -> the gold judge, called only when samples are missing from the cache."""
    prompts = {question_text(p.messages): (p.prompt_id, p.messages) for p in rm_pairs}

    def make_batch(batch: list[str], model, tokenizer) -> dict:
        sampled = sample_texts(model, tokenizer, batch, batch_seed(batch), (PAIR_TEMPERATURE,), PAIR_SAMPLES)
        return {q: {"texts": texts, "judge_scores": judge().score([q] * len(texts), texts).tolist() if texts else []}
                for q, texts in zip(batch, sampled)}

    path = pairs_cache_path(model_config.model_name_or_path, model_config.cache_dir)
    cached = build_cached(model_config, path, list(prompts), make_batch, f"testbed {PAIRS_VERSION} RM sample pairs")
    return [pair for question, (prompt_id, messages) in prompts.items()
            for pair in pairs_from_scores(prompt_id, messages, cached[question]["texts"],
                                          cached[question]["judge_scores"])]
