"""`--dry_run` on any recipe: check a config and its data, and print the plan, without loading model weights.

It does what a run does before the model loads (validate the config, read and convert every data file, the checks
on the RM's training) plus what needs only the tokenizer (the chat template on every prompt and pair, the prompt
length limit), then prints what the game would do. Problems stop it the way they stop a run: one line, status 2.
Only the tokenizer is read (a built-in model is still converted once if it is not cached yet), and the
judge-labelled testbed is not built: queries it lacks are counted instead.
"""

from __future__ import annotations

import dataclasses
import os

from apo_online.config import Config
from apo_online.data.canonical import PromptEncoder, encode_pairs
from apo_online.data.task import load_task_data
from apo_online.testbeds.judged_task import DATASET_VERSIONS, missing_queries
from apo_online.model_loading import ensure_distinct_pad_token, load_tokenizer
from apo_online.optimizers.base import build_policy_optimizer
from apo_online.rm.apo_step import untrained_rm_reason, warmup_step_count
from apo_online.policy_reward.config import parse_reward_terms


def plan(config: Config) -> list[str]:
    """The plan's lines; raises ConfigError / DataFormatError like a run would."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    config.validate(world)
    dc, mc, g = config.data, config.model, config.game
    lines = [f"config: OK; {g.policy_optimizer}, {g.total_steps} steps, {world} process(es), output {g.output_dir}"]
    if dc.dataset_name in DATASET_VERSIONS and (missing := missing_queries(mc, dc)):
        lines.append(f"testbed: {missing} queries of the judge-labelled testbed are not built yet: the run samples "
                     f"them first (python -m apo_online.testbeds.judged_task builds them ahead); planned on `embedded`")
        dc = dataclasses.replace(dc, dataset_name="embedded")
    task = load_task_data(dc, g.seed, mc)
    terms = parse_reward_terms(config)  # loads every function term once
    uses_rm = any(term.spec == "rm" for term in terms)
    untrained = untrained_rm_reason(config, task) if uses_rm else None
    tokenizer = load_tokenizer(mc.tokenizer_name_or_path or mc.model_name_or_path, mc.cache_dir)
    ensure_distinct_pad_token(tokenizer)
    encoder = PromptEncoder(tokenizer, dc.max_prompt_tokens, dc.prompt_overflow, dc.max_response_tokens,
                            dc.system_prompt)
    prompts = encoder.encode_prompts(task.train_prompts)  # raises when no prompt is usable
    pairs = encode_pairs(encoder, task.preference_pairs)
    template = "the tokenizer's chat template" if getattr(tokenizer, "chat_template", None) else "plain text"
    with_gold = sum(p.gold_ids is not None for p in prompts)
    lines += [
        f"data: {len(prompts)} policy prompts ({with_gold} with a gold response), {len(pairs)} human pairs, "
        f"{len(task.eval_prompts)} eval prompts, {len(task.eval_preference_pairs)} eval pairs; "
        f"{task.skipped_rows} rows skipped, {task.empty_responses()} empty responses",
        f"prompts: {template}; {encoder.truncated_prompts} truncated, {encoder.rejected_prompts} rejected at "
        f"data.max_prompt_tokens={dc.max_prompt_tokens} ({dc.prompt_overflow})",
        rollout_line(config),
        "policy reward: " + " + ".join(f"{t.weight:g} x {t.spec}" for t in terms) + (
            f", minus {config.rollout.missing_eos_penalty:g} if cut" if config.rollout.missing_eos_penalty else ""),
    ]
    lines += rm_lines(config, len(pairs), with_gold, untrained) if uses_rm else [
        "RM: not used (reward.terms has no rm term): no warm-up, no APO updates"]
    lines.append("nothing was trained; no model weights were loaded")
    return lines


def rollout_line(config: Config) -> str:
    spec = build_policy_optimizer(config).rollout_spec()
    n = spec.samples_per_prompt or config.rollout.samples_per_prompt
    r = config.rollout
    return (f"per step and process: {r.prompts_per_step} prompts x {n} samples = {r.prompts_per_step * n} rollouts "
            f"of at most {r.max_new_tokens} new tokens (temperature {r.temperature})")


def rm_lines(config: Config, pairs: int, with_gold: int, untrained: str | None) -> list[str]:
    rm, world = config.rm, int(os.environ.get("WORLD_SIZE", "1"))
    if config.model.reward_model_path:
        lines = [f"RM: the separate model {config.model.reward_model_path}"]
    elif untrained:
        return [f"RM: UNTRAINED at the start (rm.allow_untrained): {untrained}"]
    else:
        per_step = max(1, min(rm.pairs_per_step, pairs)) * world
        lines = [f"RM warm-up: {warmup_step_count(rm, pairs, world)} Bradley-Terry steps on {pairs} human pairs "
                 f"({per_step} per step)"]
    if not rm.update_every:
        return lines + ["RM updates: none (rm.update_every 0: a frozen RM)"]
    guard = "stop-token samples only" if rm.eos_only else "every sample"
    window = f"the last {rm.sample_window} policy steps" if rm.sample_window else "the whole buffer"
    lines.append(f"RM updates: every {rm.update_every} steps, {rm.mode} mode, {rm.steps_per_update} steps of "
                 f"{rm.queries_per_step} (gold, samples) groups from {with_gold} gold prompts ({guard}, samples of "
                 f"{window}) + {rm.pairs_per_step} human pairs; L = {rm.apo_coeff} L_APO + {rm.beta2} L_BT")
    return lines
