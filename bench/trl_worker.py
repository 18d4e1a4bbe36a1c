"""One benchmark run of TRL 1.12.0's PPOTrainer (trl.experimental.ppo): four full models, or LoRA on the policy.

Runs in the TRL venv (bench/.venv-trl, made by run_bench.py); it never imports apo_online. It reads the settings and
the already-tokenised prompts that `bench/apo_worker.py --export` wrote, so both sides see the same prompts (chat
template and system prompt applied), model, batch, response length, PPO epochs and minibatches:

    bench/.venv-trl/bin/python bench/trl_worker.py --assets bench/.assets/tiny.json --warmup 1 --updates 3

policy, ref_policy (AutoModelForCausalLM) and reward_model, value_model (AutoModelForSequenceClassification,
num_labels=1) are four full copies of the same checkpoint (variant trl_ppo). With --peft (variant trl_ppo_peft) the
policy gets a LoRA peft_config of apo-online's rank, alpha and target modules, and TRL drops the reference copy
(the policy with its adapter off); reward and value models stay full, as TRL 1.12.0 has no LoRA path for them.
Each PPO update is timed with a TrainerCallback (on_step_end);
generation is timed and its tokens counted by wrapping TRL's batch_generation. Prints ONE JSON line on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")


def peak_rss_mb() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return (own + children) / 1024.0  # KiB on Linux


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--assets", type=Path, required=True, help="JSON written by apo_worker.py --export")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--updates", type=int, default=3)
    parser.add_argument("--learning-rate", type=float, default=1e-5, help="full fine-tuning rate (speed-neutral)")
    parser.add_argument("--peft", action="store_true",
                        help="LoRA on the policy (TRL's peft_config; rank, alpha and target modules as apo-online's): "
                             "no reference copy, the value model stays full")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    args = parser.parse_args(argv)
    assets = json.loads(args.assets.read_text(encoding="utf-8"))

    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, TrainerCallback
    from trl.experimental.ppo import PPOConfig, PPOTrainer
    from trl.experimental.ppo import ppo_trainer as trl_ppo

    torch.set_num_threads(args.threads)
    path = assets["model_path"]
    dtype = getattr(torch, assets.get("dtype", "float32"))
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.padding_side = "left"
    tokenizer.pad_token = assets["pad_token"]  # the same distinct pad token apo-online picked
    assert tokenizer.pad_token_id == assets["pad_token_id"], (tokenizer.pad_token_id, assets["pad_token_id"])

    def causal_lm():
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        return model

    def scalar_model():
        return AutoModelForSequenceClassification.from_pretrained(
            path, num_labels=1, dtype=dtype, pad_token_id=tokenizer.pad_token_id)

    policy, reward_model, value_model = causal_lm(), scalar_model(), scalar_model()
    # with peft_config TRL wraps the policy in LoRA and takes the reference from it with the adapter off
    ref_policy = None if args.peft else causal_lm()
    targets = assets["lora_target_modules"]
    targets = targets if targets == "all-linear" else [t.strip() for t in targets.split(",") if t.strip()]
    peft_config = LoraConfig(r=assets["lora_r"], lora_alpha=assets["lora_alpha"], lora_dropout=0.0, bias="none",
                             target_modules=targets, task_type="CAUSAL_LM") if args.peft else None
    if assets["gradient_checkpointing"]:
        # PPOTrainer overrides Trainer.train and never applies PPOConfig.gradient_checkpointing (its default True
        # is a no-op in TRL 1.12.0): enable it on the two trained models, as a user who wants it has to.
        for model in (policy, value_model):
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    dataset = Dataset.from_dict({"input_ids": assets["prompts"]})
    batch = assets["prompts_per_step"]
    steps = args.warmup + args.updates

    with tempfile.TemporaryDirectory(prefix="trl_bench_") as output_dir:
        config = PPOConfig(
            output_dir=output_dir, report_to="none", save_strategy="no", logging_steps=1, disable_tqdm=True,
            use_cpu=not torch.cuda.is_available(), bf16=dtype == torch.bfloat16, seed=42,  # apo-online's model.dtype
            gradient_checkpointing=assets["gradient_checkpointing"],  # TRL defaults to True; match apo-online
            per_device_train_batch_size=batch, gradient_accumulation_steps=1,
            num_mini_batches=assets["num_minibatches"], num_ppo_epochs=assets["ppo_epochs"],
            total_episodes=steps * batch, response_length=assets["max_new_tokens"],
            local_rollout_forward_batch_size=assets["forward_batch_size"], num_sample_generations=0,
            temperature=assets["temperature"], missing_eos_penalty=assets["missing_eos_penalty"], stop_token="eos",
            kl_coef=assets["kl_coef"], cliprange=assets["cliprange"], cliprange_value=assets["cliprange_value"],
            vf_coef=assets["vf_coef"], gamma=assets["gamma"], lam=assets["lam"], learning_rate=args.learning_rate,
        )
        generation_times: list[float] = []
        tokens: list[int] = []
        original_batch_generation = trl_ppo.batch_generation

        def timed_batch_generation(model, queries, *rest, **kw):
            started = time.perf_counter()
            query_responses, logits = original_batch_generation(model, queries, *rest, **kw)
            generation_times.append(time.perf_counter() - started)
            responses = query_responses[:, queries.shape[1] :]
            is_eos = responses == tokenizer.eos_token_id  # tokens up to and including the first EOS
            lengths = torch.where(is_eos.any(1), is_eos.float().argmax(1) + 1, responses.shape[1])
            tokens.append(int(lengths.sum()))
            return query_responses, logits

        trl_ppo.batch_generation = timed_batch_generation
        marks: list[float] = []

        class StepTimer(TrainerCallback):
            def on_train_begin(self, *a, **kw):
                marks.append(time.perf_counter())

            def on_step_end(self, *a, **kw):
                marks.append(time.perf_counter())

        trainer = PPOTrainer(args=config, processing_class=tokenizer, model=policy, ref_model=ref_policy,
                             reward_model=reward_model, value_model=value_model, train_dataset=dataset,
                             peft_config=peft_config,
                             eval_dataset=dataset.select(range(batch)), callbacks=[StepTimer()])
        trainer.train()

    step_times = [b - a for a, b in zip(marks, marks[1:])]
    if len(step_times) != steps:
        raise RuntimeError(f"expected {steps} PPO updates, timed {len(step_times)}")
    timed = slice(args.warmup, None)
    print(json.dumps({
        "variant": "trl_ppo_peft" if args.peft else "trl_ppo", "size": assets["size"],
        "step_times": step_times[timed], "generation_times": generation_times[timed],
        "rm_time": 0.0, "wall_time": marks[-1] - marks[args.warmup],
        "tokens_generated": sum(tokens[timed]), "peak_rss_mb": peak_rss_mb(),
        "peak_cuda_mb": torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None,
    }), flush=True)


if __name__ == "__main__":
    main()
