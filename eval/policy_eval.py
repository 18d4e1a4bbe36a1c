"""Policy evaluation: a run's trained policy vs the reference (the base model, adapters disabled).

    python eval/policy_eval.py --run runs/apo_ppo                     # final policy, judges: the run's RM + gold
    python eval/policy_eval.py --run runs/apo_ppo/checkpoints/step-000010 --judges gold --num_prompts 32

On held-out eval prompts (the embedded task's `eval` split, or --prompts FILE with optional gold answers) both the
policy and the reference sample responses with the same seed. Reported per side: the average score under each judge
(`rm`: the run's own reward model; `gold`: the hidden gold judge of apo_online/testbeds/gold_judge.py), the win rate
against the prompts' human answers under each judge, the sequence KL to the reference (k1 on the sampled tokens, at
the sampling temperature), response length and stop-token rate; plus the policy's win rate against the reference's
response to the same prompt. Prints a table and writes JSON (default <run>/policy_eval.json). The judges and the
prompt loading are apo_online/evaluation/policy_judges.py, shared with eval/generate.py.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: import this checkout's packages, not an installed copy
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from apo_online.data.canonical import PromptEncoder, PromptExample  # noqa: E402
from apo_online.evaluation.game_eval import sample_responses, win_rate  # noqa: E402
from apo_online.evaluation.policy_judges import JUDGES, SIDES, judge_functions, load_prompts  # noqa: E402
from apo_online.testbeds.gold_judge import question_text  # noqa: E402
from apo_online.run.loading import LoadedRun, load_run  # noqa: E402
from apo_online.evaluation.report_json import write_json  # noqa: E402


def evaluate_policy(loaded: LoadedRun, examples: list[PromptExample], judges: list[str], samples_per_prompt: int = 1,
                    max_new_tokens: int | None = None, temperature: float | None = None, seed: int = 0) -> dict:
    dc, rc = loaded.config.data, loaded.config.rollout
    encoder = PromptEncoder(loaded.tokenizer, dc.max_prompt_tokens, dc.prompt_overflow, dc.max_response_tokens,
                            dc.system_prompt)
    encoded = encoder.encode_prompts(examples)
    questions = [question_text(examples[p.prompt_index].messages) for p in encoded]
    prompt_ids = [p.input_ids for p in encoded]
    samples = {}
    for side in SIDES:
        torch.manual_seed(seed)  # same seed for both sides: the comparison differs by the model, not by luck
        samples[side] = sample_responses(loaded.backbone, loaded.tokenizer, prompt_ids, side, samples_per_prompt,
                                         max_new_tokens or rc.max_new_tokens, temperature or rc.temperature,
                                         rc.top_k, rc.top_p)
    # the prompts' human answers (gold, else the first reference), where they have one
    humans = {i: examples[p.prompt_index].gold or (examples[p.prompt_index].references or [None])[0]
              for i, p in enumerate(encoded)}
    humans = {i: text for i, text in humans.items() if text is not None}
    rows = sorted(humans)
    result = {"source": loaded.source, "prompts": len(encoded), "samples_per_prompt": samples_per_prompt,
              "sides": {side: {} for side in SIDES}, "human": {}, "policy_vs_reference": {}}
    for name, judge in judge_functions(loaded, judges).items():
        human_scores = judge([prompt_ids[i] for i in rows], [questions[i] for i in rows],
                             [encoder.response_ids(humans[i]) for i in rows], [humans[i] for i in rows])
        human_by_prompt = dict(zip(rows, human_scores.tolist()))
        result["human"][f"{name}_score"] = human_scores.mean().item() if rows else float("nan")
        side_scores = {}
        for side, s in samples.items():
            side_scores[side] = judge(s.prompt_ids, [questions[i] for i in s.prompt_positions], s.response_ids,
                                      s.texts)
            judged = [k for k, i in enumerate(s.prompt_positions) if i in human_by_prompt]
            result["sides"][side][f"{name}_score"] = side_scores[side].mean().item()
            result["sides"][side][f"{name}_win_rate_vs_human"] = win_rate(
                side_scores[side][judged], [human_by_prompt[s.prompt_positions[k]] for k in judged])
        result["policy_vs_reference"][f"{name}_win_rate"] = win_rate(side_scores["policy"], side_scores["reference"])
    for side, s in samples.items():
        result["sides"][side].update({"kl": s.kl.mean().item(), "response_length": s.lengths.mean().item(),
                                      "eos_fraction": s.has_eos.float().mean().item()})
        result["sides"][side]["examples"] = [{"prompt": questions[i], "response": t}
                                             for i, t in zip(s.prompt_positions[:5], s.texts[:5])]
    return result


def format_table(result: dict) -> str:
    sides, human = result["sides"], result["human"]
    lines = [f"{'':34}{'policy':>10}{'reference':>11}{'human':>9}"]

    def row(label, key, human_key=None):
        values = [sides[s].get(key) for s in SIDES]
        if any(v is None for v in values):
            return
        human_value = f"{human[human_key]:9.3f}" if human_key in human else f"{'-':>9}"
        lines.append(f"{label:34}{values[0]:10.3f}{values[1]:11.3f}{human_value}")

    for name in JUDGES:
        row(f"{name} score", f"{name}_score", f"{name}_score")
        row(f"{name} win rate vs human answer", f"{name}_win_rate_vs_human")
    row("KL to reference (nats)", "kl")
    row("response length (tokens)", "response_length")
    row("stop-token rate", "eos_fraction")
    for key, value in result["policy_vs_reference"].items():
        lines.append(f"policy beats reference ({key.split('_')[0]}): {value:.3f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="run output_dir, its final/, a checkpoint or its adapters/")
    parser.add_argument("--judges", default="rm,gold", help=f"comma-separated, from {', '.join(JUDGES)}")
    parser.add_argument("--prompts", help="prompts file (prompt + optional gold); default: the task's eval prompts")
    parser.add_argument("--num_prompts", type=int, default=None, help="first N prompts (default: all)")
    parser.add_argument("--samples_per_prompt", type=int, default=1)
    parser.add_argument("--max_new_tokens", type=int, default=None, help="default: the run's rollout setting")
    parser.add_argument("--temperature", type=float, default=None, help="default: the run's rollout setting")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", help="JSON file (default: <run>/policy_eval.json)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    judges = [j.strip() for j in args.judges.split(",") if j.strip()]
    unknown = [j for j in judges if j not in JUDGES]
    if unknown:
        parser.error(f"unknown judge(s) {unknown}: choose from {', '.join(JUDGES)}")
    loaded = load_run(args.run, "cuda" if torch.cuda.is_available() else "cpu")
    examples = load_prompts(args.prompts, loaded.config)[: args.num_prompts]
    result = evaluate_policy(loaded, examples, judges, args.samples_per_prompt, args.max_new_tokens,
                             args.temperature, args.seed)
    output = Path(args.output or Path(args.run) / "policy_eval.json")
    output.parent.mkdir(parents=True, exist_ok=True)
    write_json(output, result)
    print(f"policy of {result['source']} on {result['prompts']} prompts x {result['samples_per_prompt']} samples")
    print(format_table(result))
    print(f"wrote {output}")
    return result


if __name__ == "__main__":
    main()
