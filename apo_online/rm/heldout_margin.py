"""Is the adversary ahead? `rm.heldout_margin_prompts`: after each APO update of the RM, the current policy answers a
few held-out gold-annotated prompts and the RM scores each gold response against the policy's sample.

    rm/heldout_gold_minus_sample    mean_k r(gold_k) - r(sample_k)   over the K prompts, one sample each

The prompts are the task's eval prompts that have a gold response: no RM update ever trains on them (the APO term
draws from the policy prompts, the Bradley-Terry term from the preference pairs). A positive margin right after an
update means the RM scores gold above what the policy writes now: the adversary has won its half of the game. The
samples use their own seed inside torch.random.fork_rng, so training takes the same path with or without this.
"""

from __future__ import annotations

import logging

import torch
from trl.models.utils import unwrap_model_for_generation

from apo_online.data.canonical import at_stop_position
from apo_online.evaluation.game_eval import sample_responses, scorer_scores

logger = logging.getLogger(__name__)
MARGIN_SEED_OFFSET = 104729  # apart from the game's and the evaluation's random streams


class HeldOutMargin:
    """Callable game -> {"rm/heldout_gold_minus_sample": margin}; empty when the task has no held-out gold prompt."""

    def __init__(self, game, num_prompts: int):
        examples = [e for e in game.task.eval_prompts if e.gold is not None]
        self.prompts = game.encoder.encode_prompts(examples[:num_prompts]) if examples else []
        if not self.prompts:
            logger.warning("rm.heldout_margin_prompts: the task has no eval prompt with a gold response; the "
                           "held-out margin is not logged")

    @torch.no_grad()
    def __call__(self, game) -> dict[str, float]:
        if not self.prompts:
            return {}
        devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(game.config.game.seed + MARGIN_SEED_OFFSET + game.step)
            rollout = game.config.rollout
            with unwrap_model_for_generation(game.ctx.model, game.accelerator) as backbone:
                samples = sample_responses(backbone, game.tokenizer, [p.input_ids for p in self.prompts], "policy", 1,
                                           rollout.max_new_tokens, rollout.temperature, rollout.top_k, rollout.top_p)
        responses = samples.response_ids
        if game.config.rm.score_cut_as_stopped:  # scored as the game scores them
            responses = at_stop_position(responses, samples.has_eos.tolist(), game.tokenizer.eos_token_id)
        ids, messages = [p.input_ids for p in self.prompts], [p.messages for p in self.prompts]
        margin = (scorer_scores(game.scorer, ids, messages, [p.gold_ids for p in self.prompts])
                  - scorer_scores(game.scorer, ids, messages, responses))
        return {"rm/heldout_gold_minus_sample": margin.mean().item()}
