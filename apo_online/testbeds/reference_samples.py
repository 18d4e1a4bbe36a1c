"""Reference-policy samples for the judged testbeds (judged_task.py, judged_pairs.py), built once and cached.

Both testbed parts sample the run's base model (adapters off) in one fixed prompt format, so that a testbed is one
dataset per base model whatever a run's data settings are, and judge the samples with the hidden judge. Sampling is
the expensive part (about 0.3 s per 24-token sample of SmolLM2-135M on 2 CPU cores), so the results are cached per
query in one JSON file per (base model, settings), keyed by a content hash, next to the judge (~/.cache/apo_online or
$APO_ONLINE_CACHE); only missing queries are ever generated, GENERATION_BATCH at a time, each batch saved when it is
done (an interrupted build resumes where it stopped), under a file lock so that the processes of one launch build it
once. The builds for smollm2-135m-instruct ship with the package (SHIPPED), so the default run generates nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from pathlib import Path

import torch
from tqdm.auto import tqdm

from apo_online.assets import file_lock
from apo_online.data.canonical import PromptEncoder, left_pad
from apo_online.model_loading import load_causal_lm

SYSTEM_PROMPT = "Answer in one short sentence."  # the recipes' own prompt format
MAX_PROMPT_TOKENS = 64
CANDIDATE_MAX_NEW_TOKENS = 24
GENERATION_BATCH = 32  # prompts per generate call
SHIPPED = Path(__file__).parent  # prebuilt files (this folder), named as in the cache


def batch_seed(questions: list[str]) -> int:
    """The sampling seed of one batch: from its content, so a resumed or partial build samples the same texts."""
    return int(hashlib.sha256("\n".join(questions).encode()).hexdigest()[:8], 16)


@torch.no_grad()
def sample_texts(model, tokenizer, questions: list[str], seed: int, temperatures: tuple[float, ...],
                 per_temperature: int) -> list[list[str]]:
    """Non-empty reference samples for each question (cut at the stop token, stripped), per_temperature at each
    temperature, one generate call per temperature (pass at most GENERATION_BATCH questions). The global random
    state is restored afterwards: building a testbed must not shift a game's random stream."""
    encoder = PromptEncoder(tokenizer, MAX_PROMPT_TOKENS, "truncate", CANDIDATE_MAX_NEW_TOKENS, SYSTEM_PROMPT)
    prompt_ids = [encoder.prompt_ids([{"role": "user", "content": q}]) for q in questions]
    device, n = next(model.parameters()).device, per_temperature
    ids, mask = (t.to(device) for t in left_pad(prompt_ids, tokenizer.pad_token_id))
    out: list[list[str]] = [[] for _ in questions]
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        for temperature in temperatures:
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


def cached_file(path: Path) -> dict:
    """The build cached at `path`, else the shipped build of that name (the default model's), else none."""
    source = path if path.is_file() else SHIPPED / path.name
    return json.loads(source.read_text(encoding="utf-8")) if source.is_file() else {}


def save_atomically(path: Path, content: dict) -> None:
    """Write JSON beside `path` and rename it over: a crash mid-write never leaves a half file in the cache."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(content, ensure_ascii=False), encoding="utf-8")
    tmp.rename(path)


def build_cached(model_config, path: Path, keys: list[str], make_batch: Callable, what: str) -> dict:
    """key -> entry for every key, from the cache file at `path`, building only the missing keys with
    make_batch(keys, model, tokenizer) -> {key: entry} (JSON-serialisable), GENERATION_BATCH keys per call; the base
    model is loaded only when something is missing. what: the log line's and progress bar's name."""
    with file_lock(path.with_suffix(".lock")):
        cached = cached_file(path)
        missing = [k for k in dict.fromkeys(keys) if k not in cached]
        if missing:
            logging.getLogger(__name__).warning("building %s for %d queries (one-off, cached in %s) from %s", what,
                                                len(missing), path, model_config.model_name_or_path)
            model, tokenizer = load_causal_lm(model_config)
            model.to("cuda" if torch.cuda.is_available() else "cpu").eval()
            for start in tqdm(range(0, len(missing), GENERATION_BATCH), desc=what):
                cached.update(make_batch(missing[start: start + GENERATION_BATCH], model, tokenizer))
                save_atomically(path, cached)
    return cached
