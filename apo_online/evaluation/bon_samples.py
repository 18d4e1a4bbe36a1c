"""A pool of N sampled responses per prompt, for best-of-n measurements (eval/bon_probe.py), cached by content hash.

Best-of-n asks "which of n responses does a selector pick, and how good is it?". Sampling is the expensive part
(~0.27 s per 24-token SmolLM2-135M sample on 2 CPU cores); selectors (reward models, the judge, random choice) are
cheap by comparison. So the pool is sampled once and every selector scores the same samples.

Sampling uses a plain causal LM: the base model for the reference policy, or the base model with a run's policy
adapter merged into its weights (`--policy <run>`). No adapter runs per token, and the samples are those of the
policy the game would sample (same prompt format, temperature, top-k/top-p, max_new_tokens, stop token).

The cache file (cache_root()/bon/samples-<key>.json) is keyed by a hash of the model, the policy's adapter
weights, the sampling settings and N; inside it each prompt is keyed by the hash of its token ids and sampled with a
seed derived from that hash. So a prompt's samples do not depend on which other prompts are in the pool, or in what
order: an interrupted build resumes where it stopped, two pools with shared prompts agree on them, and only missing
prompts are ever sampled. The file is rewritten (atomically) every SAVE_EVERY prompts.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from apo_online.assets import cache_root, file_lock
from apo_online.model_loading import load_causal_lm
from apo_online.rollout import truncate_at_stop, truncate_lists
from apo_online.shared_prefill import generate_sharing_prompts

POOL_VERSION = "v1"  # bump when the sampling procedure changes: part of the key
SAVE_EVERY = 4  # prompts sampled between two writes of the cache file


@dataclass
class SamplePool:
    """N responses for each of P prompts. Rows are [P][N]."""

    prompt_ids: list[list[int]]  # [P]
    response_ids: list[list[list[int]]]  # [P][N] tokens, the stop token included when the sample stopped
    has_eos: list[list[bool]]  # [P][N] ended with the stop token (False: cut at max_new_tokens)
    texts: list[list[str]]  # [P][N] decoded without special tokens
    key: str  # the cache key: model, policy, sampling settings, N


def policy_fingerprint(policy_dir: str | Path | None) -> str:
    """'reference', or a hash of the policy adapter's files (its weights decide the samples, not its path)."""
    if policy_dir is None:
        return "reference"
    digest = hashlib.sha256()
    for path in sorted(Path(policy_dir).glob("adapter_*")):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def pool_key(model_name: str, policy: str, rollout_config, n: int) -> str:
    settings = [POOL_VERSION, model_name, policy, n, rollout_config.max_new_tokens, rollout_config.temperature,
                rollout_config.top_k, rollout_config.top_p]
    return hashlib.sha256(json.dumps(settings).encode()).hexdigest()[:16]


def load_sampling_model(model_config, policy_dir: str | Path | None = None):
    """(model, tokenizer): the base model, or with the peft policy adapter at policy_dir merged into its weights."""
    model, tokenizer = load_causal_lm(model_config)
    if policy_dir is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(policy_dir)).merge_and_unload()
    return model.eval(), tokenizer


def _prompt_seed(key: str, prompt_ids: list[int]) -> int:
    return int(hashlib.sha256(json.dumps([key, prompt_ids]).encode()).hexdigest()[:8], 16)


def _prompt_key(prompt_ids: list[int]) -> str:
    return hashlib.sha256(json.dumps(prompt_ids).encode()).hexdigest()[:16]


@torch.no_grad()
def _sample_prompt(model, tokenizer, prompt_ids: list[int], n: int, rollout_config, seed: int) -> dict:
    """n samples of one prompt (one generate call, its own seed, no padding) -> {"response_ids", "has_eos"}."""
    device = next(model.parameters()).device
    ids = torch.tensor([prompt_ids], device=device)
    torch.manual_seed(seed)
    # the prompt's prefill once for its n samples (shared_prefill.py): the same samples, 1/n of the prompt's cost
    sequences = generate_sharing_prompts(model, ids, torch.ones_like(ids), do_sample=True,
                                         temperature=rollout_config.temperature, top_k=rollout_config.top_k or None,
                                         top_p=rollout_config.top_p, max_new_tokens=rollout_config.max_new_tokens,
                                         num_return_sequences=n, pad_token_id=tokenizer.pad_token_id,
                                         eos_token_id=[tokenizer.eos_token_id])
    responses, mask, has_eos = truncate_at_stop(sequences[:, ids.shape[1]:], [tokenizer.eos_token_id],
                                                tokenizer.pad_token_id)
    return {"response_ids": truncate_lists(responses, mask), "has_eos": has_eos.tolist()}


def _write(path: Path, entries: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(entries), encoding="utf-8")
    tmp.rename(path)


def build_pool(model_config, rollout_config, prompt_ids: list[list[int]], n: int, policy_dir=None,
               model_and_tokenizer=None, desc: str = "best-of-n samples") -> SamplePool:
    """n samples of the policy (the reference when policy_dir is None) for every prompt, from the cache where it has
    them; the rest sampled, SAVE_EVERY prompts at a time, under a file lock. model_and_tokenizer: an already loaded
    (model, tokenizer) pair for this policy (else loaded only if something is missing)."""
    key = pool_key(model_config.model_name_or_path, policy_fingerprint(policy_dir), rollout_config, n)
    path = cache_root(model_config.cache_dir) / "bon" / f"samples-{key}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(path.with_suffix(".lock")):
        entries = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
        missing = list(dict.fromkeys(_prompt_key(p) for p in prompt_ids if _prompt_key(p) not in entries))
        if missing:
            model, tokenizer = model_and_tokenizer or load_sampling_model(model_config, policy_dir)
            by_key = {_prompt_key(p): p for p in prompt_ids}
            for count, k in enumerate(tqdm(missing, desc=desc), 1):
                entries[k] = _sample_prompt(model, tokenizer, by_key[k], n, rollout_config,
                                            _prompt_seed(key, by_key[k]))
                if count % SAVE_EVERY == 0 or count == len(missing):
                    _write(path, entries)
    tokenizer = model_and_tokenizer[1] if model_and_tokenizer else None
    return _as_pool(entries, prompt_ids, key, tokenizer or _tokenizer(model_config))


def _tokenizer(model_config):
    from apo_online.model_loading import load_tokenizer

    return load_tokenizer(model_config.tokenizer_name_or_path or model_config.model_name_or_path,
                          model_config.cache_dir)


def _as_pool(entries: dict, prompt_ids: list[list[int]], key: str, tokenizer) -> SamplePool:
    rows = [entries[_prompt_key(p)] for p in prompt_ids]
    return SamplePool(prompt_ids=[list(p) for p in prompt_ids], response_ids=[r["response_ids"] for r in rows],
                      has_eos=[r["has_eos"] for r in rows],
                      texts=[tokenizer.batch_decode(r["response_ids"], skip_special_tokens=True) for r in rows],
                      key=key)
