"""The judges that score a trained policy's answers after the game, and the prompts they are asked on, shared by
eval/policy_eval.py (policy vs reference on held-out prompts) and eval/generate.py (answers to given prompts), so
that both scripts score with the same functions and read a prompts file the same way."""

from __future__ import annotations

from apo_online.data.canonical import PromptExample
from apo_online.data.formats import convert_rows, read_rows
from apo_online.data.task import BUILTIN_TASKS, load_task_data
from apo_online.evaluation.game_eval import reward_scores
from apo_online.run.loading import LoadedRun
from apo_online.testbeds.gold_judge import load_gold_judge

JUDGES = ("rm", "gold")  # the run's own reward model; the hidden gold judge of apo_online/testbeds/gold_judge.py
SIDES = ("policy", "reference")  # the trained policy adapter; the base model with adapters disabled


def load_prompts(prompts_file: str | None, config) -> list[PromptExample]:
    """The prompts of a prompts file (rows with a prompt and an optional gold answer), else the run's task's held-out
    eval prompts: the policy never trained on those."""
    if prompts_file:
        records, _ = convert_rows(read_rows(prompts_file), "prompts", skip_bad_rows=False)
        return records
    prompts = load_task_data(config.data, config.game.seed, config.model).eval_prompts
    if not prompts:
        raise ValueError("the run's task has no eval prompts: pass --prompts FILE")
    return prompts


def judge_functions(loaded: LoadedRun, judges: list[str]):
    """judge name -> f(prompt_ids, questions, response_ids, texts) -> [B] scores (token ids for the RM, text for the
    gold judge, which has its own tokenizer)."""
    pad_id = loaded.tokenizer.pad_token_id
    functions = {}
    if "rm" in judges:
        functions["rm"] = lambda prompt_ids, questions, response_ids, texts: reward_scores(
            loaded.backbone, prompt_ids, response_ids, pad_id)
    if "gold" in judges:
        data, seed = loaded.config.data, loaded.config.game.seed
        pairs = None if data.dataset_name in BUILTIN_TASKS else load_task_data(data, seed).judge_pairs
        judge = load_gold_judge(pairs, loaded.config.model.cache_dir)
        functions["gold"] = lambda prompt_ids, questions, response_ids, texts: judge.score(questions, texts)
    return functions
