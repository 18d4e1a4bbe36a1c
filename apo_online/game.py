"""The online APO game, step by step (docs/design.md):

  0. RM warm-up: Bradley-Terry on human preference pairs (the base RM; refit mode returns to it)
  for each step:
    1. rollout       sample responses with the policy adapter, cut at the stop token, score with the reward terms
                     (the RM by default; policy_reward/terms.py), reference log-probs with adapters off, values with the
                     value adapter
    2. policy update the pluggable policy optimizer (PPO by default) consumes the rollout
    3. RM update     every rm.update_every steps, when the reward has an rm term: the adversarial APO refit of
                     the reward adapter on (gold, fresh sample) groups from the buffer + beta2 * human pairs
    4. bookkeeping   log (TensorBoard + metrics.jsonl), evaluate, checkpoint on their cadences

Faults: SIGTERM/SIGINT finish the current step, checkpoint and stop (run/stopping.py: a repeat within a few seconds is
the same stop, a later one aborts at once); after game.max_consecutive_skips non-finite updates in a row, or a bad value
from a reward term (policy_reward/terms.py), the game checkpoints and raises NonFiniteUpdates or BadReward. The run
directory is locked while the game lives (run/directory.py).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import signal
import time
from pathlib import Path

import torch
import yaml
from accelerate.utils import set_seed
from tqdm.auto import tqdm

from apo_online.backbone import LoraSettings, SharedBackbone
from apo_online.run.checkpoint import export_adapters, load_checkpoint, save_checkpoint
from apo_online.config import Config, ConfigError
from apo_online.errors import GAME_FAULTS, BadReward
from apo_online.data.canonical import PromptEncoder, PromptSampler, TaskData, encode_pairs
from apo_online.distributed import describe_launch, make_accelerator
from apo_online.evaluation.game_eval import GoldJudgeEvaluator
from apo_online.rm.heldout_margin import HeldOutMargin
from apo_online.run.model_card import write_model_card
from apo_online.model_loading import load_causal_lm
from apo_online.optimizers.base import build_policy_optimizer
from apo_online.rm.apo_step import AdversarialRewardStep, SampleBuffer, untrained_rm_reason
from apo_online.rm.scorers import SeparateRewardScorer, SharedRewardScorer, load_separate_reward_model
from apo_online.policy_reward.config import build_reward, parse_reward_terms
from apo_online.rollout import collect_rollout, objective_metrics
from apo_online.run.directory import claim_run_directory
from apo_online.run.log import MetricsLog, flat_hparams, progress_postfix
from apo_online.run.stopping import StopRequests
from apo_online.data.task import load_task_data
from apo_online.training import RoleAdamW, TrainingContext
from apo_online.rm.warmup_cache import warm_up_reward_model

logger = logging.getLogger(__name__)


class APOGame:
    def __init__(self, config: Config, accelerator=None, task: TaskData | None = None):
        self.config = config
        self.accelerator = accelerator or make_accelerator(config.game)
        config.validate(self.accelerator.num_processes)
        # before anything heavy: a second run on a live directory, or over an earlier run's output, stops at once
        self.run_lock, self.resume_path = claim_run_directory(config.game, self.accelerator)
        self._record_launch()
        try:
            self._setup(task)
        except BaseException:
            if self.run_lock is not None:
                self.run_lock.release()
            raise

    def _record_launch(self) -> None:
        """Log what the launch really got and write it to <output_dir>/launch.json, so a fallback is visible."""
        self.launch = describe_launch(self.accelerator, self.config.model.dtype)
        if self.accelerator.is_main_process:
            logger.info("launch: %s", ", ".join(f"{k} {v}" for k, v in self.launch.items()))
            output = Path(self.config.game.output_dir)
            output.mkdir(parents=True, exist_ok=True)
            (output / "launch.json").write_text(json.dumps(self.launch, indent=1))

    def _setup(self, task: TaskData | None) -> None:
        config = self.config
        self.task = task or load_task_data(config.data, config.game.seed, config.model)
        self.reward_specs = parse_reward_terms(config)  # checked before the model loads, as is the RM
        self.uses_rm = any(spec.spec == "rm" for spec in self.reward_specs)  # else no warm-up and no APO updates
        self.untrained_rm = untrained_rm_reason(config, self.task) if self.uses_rm else None
        set_seed(config.game.seed)  # identical initial weights on every process
        self.policy_optimizer = build_policy_optimizer(config)
        self.spec = self.policy_optimizer.rollout_spec()
        if self.spec.samples_per_prompt is None:
            self.spec = dataclasses.replace(self.spec, samples_per_prompt=config.rollout.samples_per_prompt)
        self._build_model()
        as_stopped = config.rm.score_cut_as_stopped  # the RM then scores cut samples with a stop token appended
        self.reward = build_reward(self.reward_specs, self.scorer if self.reward_model or as_stopped else None,
                                   as_stopped, config.model.cache_dir)
        self._build_data()
        self.buffer = SampleBuffer(config.rm.buffer_size)
        if config.data.seed_buffer_from_samples:  # offline samples of an APO samples file (hh_apo_formats.py)
            self.buffer.add_offline_samples(self.encoder, self.prompts, self.task.train_prompts)
        self.rm_step = AdversarialRewardStep(self.ctx, config.rm, self.prompts, self.pairs, self.scorer,
                                             seed=config.game.seed + self.accelerator.process_index,
                                             stop_id=self.tokenizer.eos_token_id)
        self.heldout_margin = (HeldOutMargin(self, config.rm.heldout_margin_prompts)
                               if config.rm.heldout_margin_prompts and config.rm.update_every and self.uses_rm
                               else None)
        self.policy_optimizer.setup(self.ctx, config)
        self.step, self.warmed_up = 0, False
        self.stop_signal: int | None = None  # the signal that asked this run to stop
        self.last_checkpoint: Path | None = None
        self._checkpoint_step = -1
        self.metrics_log = MetricsLog(self.accelerator, config.game.output_dir)
        self.evaluators = []  # callables game -> dict of eval metrics, run every game.eval_every steps
        # the hidden gold judge scores fresh policy samples (evaluation/game_eval.py); null: where the task has one
        judge = config.game.gold_judge
        if judge or (judge is None and GoldJudgeEvaluator.available(self.task)):
            self.evaluators.append(GoldJudgeEvaluator(self))
        set_seed(config.game.seed + self.accelerator.process_index)  # different samples on every process

    def _build_model(self) -> None:
        mc = self.config.model
        causal_lm, self.tokenizer = load_causal_lm(mc)
        # adapters policy and reward plus the optimizer's roles: a value adapter only for an optimizer that trains one
        backbone = SharedBackbone.build(causal_lm, LoraSettings(mc.lora_r, mc.lora_alpha, mc.lora_target_modules),
                                        tuple(self.policy_optimizer.roles))
        backbone.merged_sampling = self.config.rollout.merged_sampling
        if mc.gradient_checkpointing:
            backbone.gradient_checkpointing_enable()
        rates = dict(self.policy_optimizer.learning_rates(), reward=self.config.rm.learning_rate)
        self.learning_rates = rates
        groups = {role: {"params": backbone.role_parameters(role), "lr": lr} for role, lr in rates.items()}
        self.reward_model = None
        if mc.reward_model_path:  # a separate full RM takes the place of the reward adapter
            if self.accelerator.distributed_type.name == "DEEPSPEED":
                raise ConfigError("model.reward_model_path is not supported under DeepSpeed (one engine per "
                                  "prepared model); use the shared reward adapter")
            self.reward_model, rm_tokenizer = load_separate_reward_model(mc.reward_model_path, mc.dtype, mc.cache_dir)
            groups["reward"]["params"] = list(self.reward_model.parameters())
        optimizer = RoleAdamW(groups, weight_decay=0.0)
        if self.reward_model is None:
            self.model, self.optimizer = self.accelerator.prepare(backbone, optimizer)
        else:
            self.model, self.reward_model, self.optimizer = self.accelerator.prepare(backbone, self.reward_model,
                                                                                     optimizer)
        self.ctx = TrainingContext(self.accelerator, self.model, self.optimizer, self.config.game.max_grad_norm,
                                   self.config.game.max_consecutive_skips)
        if self.reward_model is None:
            self.scorer = SharedRewardScorer(self.ctx, self.tokenizer.pad_token_id, self.config.rm.shared_prefix)
        else:
            self.scorer = SeparateRewardScorer(self.ctx, self.reward_model, rm_tokenizer, self.tokenizer)

    def _build_data(self) -> None:
        dc = self.config.data
        self.encoder = PromptEncoder(self.tokenizer, dc.max_prompt_tokens, dc.prompt_overflow, dc.max_response_tokens,
                                     dc.system_prompt)
        try:
            self.prompts = self.encoder.encode_prompts(self.task.train_prompts)
        except ConfigError as err:
            if not self.task.skipped:
                raise
            raise ConfigError(f"{err}; besides, {self.task.skipped_summary()}") from None
        self.pairs = encode_pairs(self.encoder, self.task.preference_pairs)
        self.eval_pairs = encode_pairs(self.encoder, self.task.eval_preference_pairs)
        self.sampler = PromptSampler(len(self.prompts), self.config.rollout.prompts_per_step, self.config.game.seed,
                                     self.accelerator.process_index, self.accelerator.num_processes)

    # ---------------------------------------------------------------------------------------------------------------
    # the loop
    # ---------------------------------------------------------------------------------------------------------------
    def run(self) -> dict[str, float]:
        """Play the game to game.total_steps, or until a signal, repeated non-finite updates or a bad reward stop it."""
        resumed = self._resume()
        self.metrics_log.start(flat_hparams(self.config.to_dict()), resumed_step=self.step if resumed else None)
        stops = StopRequests(self._request_stop)
        stops.install()
        try:
            return self._play()
        except GAME_FAULTS as err:
            # every process reaches this together: the skip decision uses the all-reduced gradient only, and a bad
            # reward is all-reduced in play_step
            reason = "bad_reward" if isinstance(err, BadReward) else "nonfinite"
            self.last_checkpoint = save_checkpoint(self, self.step, reason=reason)
            where = f"step {self.step + 1}" if self.warmed_up else "the RM warm-up"
            raise type(err)(f"{err} during {where}; stopped with a checkpoint in {self.last_checkpoint}") from None
        finally:
            stops.restore()
            self.metrics_log.close()
            if self.run_lock is not None:
                self.run_lock.release()

    def _play(self) -> dict[str, float]:
        g = self.config.game
        if not self.warmed_up and not self._warm_up():
            return {}
        metrics: dict[str, float] = {}
        bar = tqdm(total=g.total_steps, initial=self.step, desc="APO game", disable=not self.accelerator.is_main_process)
        with bar:
            while self.step < g.total_steps and not self._stop_agreed():
                metrics = self.play_step()
                bar.update(1)
                bar.set_postfix(progress_postfix(metrics))
                if g.save_every and self.step % g.save_every == 0 and self.step < g.total_steps:
                    self._checkpoint("periodic")
        if self.step >= g.total_steps:  # finished: a signal that came during the last step changes nothing
            self.stop_signal = None
            self._checkpoint("final")
            self.save_final()
        else:
            logger.warning("stopped by signal %d after step %d", self.stop_signal, self.step)
            if self._checkpoint_step != self.step:  # not already saved by the periodic cadence
                self._checkpoint("signal")
        return metrics

    def _warm_up(self) -> bool:
        """0. The RM warm-up and the evaluation at the start (step 0); False when a stop signal ended the warm-up at
        a step boundary, with a checkpoint from which a resume plays its remaining steps."""
        warmup = (warm_up_reward_model(self, self.accelerator.is_main_process, should_stop=self._stop_agreed)
                  if self.uses_rm else {})
        if warmup is None:
            logger.warning("stopped by signal %d during the RM warm-up (after %d of its %d steps)", self.stop_signal,
                           self.rm_step.warmup_done, self.rm_step.warmup_steps())
            self._checkpoint("signal")
            return False
        start = self.evaluate() if self.config.game.eval_at_start else {}  # the policy is still the reference here
        self._log(warmup | self.data_metrics() | start, step=0)
        self.warmed_up = True
        return True

    def _checkpoint(self, reason: str) -> None:
        self.last_checkpoint = save_checkpoint(self, self.step, reason, keep_last=self.config.game.keep_last_checkpoints)
        self._checkpoint_step = self.step

    def _stop_agreed(self) -> bool:
        """Whether any process was signalled. Every process must agree, or the next collective would hang, so the
        answer is the all-reduced sum only: a signal whose handler runs after this process's contribution (it can
        land mid-collective) is left for the next step boundary, not acted on by this process alone."""
        if self.ctx.global_sum(float(self.stop_signal or 0)) > 0:
            self.stop_signal = self.stop_signal or signal.SIGTERM
            return True
        return False

    def play_step(self) -> dict[str, float]:
        g, started = self.config.game, time.perf_counter()
        # 1. rollout
        positions = self.sampler.next_batch()
        try:
            rollout, fault = collect_rollout(self.ctx, [self.prompts[i] for i in positions], positions,
                                             self.config.rollout, self.spec, self.tokenizer, self.reward), None
        except BadReward as err:
            fault = err
        if self.ctx.global_sum(float(fault is not None)) > 0:  # a reward term failed somewhere: all stop together
            raise fault or BadReward("a reward term returned a bad value on another process")
        after_rollout = time.perf_counter()
        # 2. policy update (the optimizer's own objective/* values win over the game's generic ones)
        metrics = objective_metrics(rollout) | self.policy_optimizer.step(rollout)
        after_policy = time.perf_counter()
        # 3. adversarial RM update on fresh samples of gold-annotated prompts
        rows = [i for i, p in enumerate(rollout.prompt_index.tolist()) if self.prompts[p].gold_ids is not None]
        responses, has_eos = rollout.response_lists(), rollout.has_eos.tolist()
        self.buffer.add([int(rollout.prompt_index[i]) for i in rows], [responses[i] for i in rows], self.step,
                        [has_eos[i] for i in rows])
        if self.uses_rm and self.config.rm.update_every and (self.step + 1) % self.config.rm.update_every == 0:
            metrics.update(self.rm_step.update(self.buffer, self.step))
            if self.heldout_margin is not None:  # is the adversary ahead of the policy it just saw?
                metrics.update(self.heldout_margin(self))
        after_rm = time.perf_counter()
        # 4. bookkeeping
        self.step += 1
        metrics.update({
            "response/length": rollout.response_mask.sum(1).mean().item(),
            "response/eos_fraction": rollout.has_eos.float().mean().item(),
            "train/skipped_updates": float(self.ctx.skipped_updates),  # total since the start of the run
            "timing/rollout_s": after_rollout - started,
            "timing/policy_update_s": after_policy - after_rollout,
            "timing/rm_update_s": after_rm - after_policy,
        })
        if g.eval_every and self.step % g.eval_every == 0:
            metrics.update(self.evaluate())
        metrics["timing/step_s"] = time.perf_counter() - started
        return self._log(metrics, self.step)

    # ---------------------------------------------------------------------------------------------------------------
    def evaluate(self) -> dict[str, float]:
        """RM preference accuracy on held-out pairs (when the reward has an rm term), plus every evaluator."""
        metrics: dict[str, float] = {}
        if self.eval_pairs and self.uses_rm:
            with torch.no_grad():
                _, rm_metrics = self.rm_step.loss([], self.eval_pairs[:32])
            metrics["eval/rm_pref_accuracy"] = rm_metrics["rm/pref_accuracy"]
        for evaluator in self.evaluators:
            metrics.update(evaluator(self))
        return metrics

    def data_metrics(self) -> dict[str, float]:
        """What the data loading kept, cut and dropped (logged at step 0 as data/*)."""
        return {"data/train_prompts": float(len(self.prompts)), "data/preference_pairs": float(len(self.pairs)),
                "data/prompts_truncated": float(self.encoder.truncated_prompts),
                "data/prompts_rejected": float(self.encoder.rejected_prompts),
                "data/skipped_rows": float(self.task.skipped_rows),
                "data/empty_responses": float(self.task.empty_responses()),
                "rm/untrained_at_start": float(self.untrained_rm is not None)}

    def _log(self, metrics: dict[str, float], step: int) -> dict[str, float]:
        return self.metrics_log.log(metrics, step)

    def save_final(self) -> Path:
        """<output_dir>/final: peft adapters, heads, tokenizer, the config and a model card (run/model_card.py)."""
        final = Path(self.config.game.output_dir) / "final"
        export_adapters(self.ctx, final)
        if self.accelerator.is_main_process:
            self.tokenizer.save_pretrained(str(final / "tokenizer"))
            (final / "config.yaml").write_text(yaml.safe_dump(self.config.to_dict(), sort_keys=False))
            write_model_card(final, self.config.to_dict(), tuple(self.policy_optimizer.roles),
                             self.accelerator.num_processes, bool(getattr(self.tokenizer, "chat_template", None)))
        self.accelerator.wait_for_everyone()
        return final

    # ---------------------------------------------------------------------------------------------------------------
    # resumable state
    # ---------------------------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"step": self.step, "warmed_up": self.warmed_up, "sampler": self.sampler.state_dict(),
                "buffer": self.buffer.state_dict(), "rm_step": self.rm_step.state_dict(),
                "policy_optimizer": self.policy_optimizer.state_dict(), "training": self.ctx.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.step, self.warmed_up = state["step"], state["warmed_up"]
        self.sampler.load_state_dict(state["sampler"])
        self.buffer.load_state_dict(state["buffer"])
        self.rm_step.load_state_dict(state["rm_step"])
        self.policy_optimizer.load_state_dict(state["policy_optimizer"])
        self.ctx.load_state_dict(state["training"])

    def _resume(self) -> bool:
        path = self.resume_path  # resolved when the run directory was claimed
        if path is None:
            return False
        step = load_checkpoint(self, path)
        # The configured learning rates win over the saved ones, so that a resumed run can change them.
        for group in self.ctx.role_optimizer.param_groups:
            group["lr"] = self.learning_rates[group["role"]]
        logger.info("resumed from %s at step %d", path, step)
        return True

    def _request_stop(self, signum: int) -> None:
        """The first stop signal: the loop stops at the next step boundary, with a checkpoint."""
        self.stop_signal = signum
        if self.run_lock is not None:  # what a refused second run will be told
            self.run_lock.note(f"stopping after signal {signum}: finishing its current step, then writing a "
                               f"checkpoint")

