"""What a trained policy answers: prompts from the command line or a file -> the policy's and the reference's answers
side by side, each with the run's RM score (and the hidden gold judge's on the embedded task).

    python eval/generate.py --run runs/apo_ppo --prompt "What is your favourite book?" --prompt "Do you dream?"
    python eval/generate.py --run runs/apo_ppo --prompts questions.txt --samples_per_prompt 2 --output answers.json

--run takes what eval/policy_eval.py takes (the run's output_dir, its final/, a checkpoint or its adapters/).
--prompts: a .txt file (one prompt per line) or a prompts file (.json/.jsonl/.parquet, `{"prompt": ...}` rows).
Each prompt becomes one user turn under the run's system prompt and chat template, as in training (too long ones
keep their end). Both sides sample with the same seed at the run's temperature and length (--temperature,
--max_new_tokens to change them), so they differ by the adapters, not by luck. An answer that hit the length limit
without its stop token ends with "...".
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: import this checkout's packages, not an installed copy
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from apo_online.data.canonical import PromptEncoder, PromptExample  # noqa: E402
from apo_online.data.task import BUILTIN_TASKS  # noqa: E402
from apo_online.evaluation.game_eval import sample_responses  # noqa: E402
from apo_online.testbeds.gold_judge import question_text  # noqa: E402
from apo_online.run.loading import LoadedRun, load_run  # noqa: E402
from apo_online.evaluation.policy_judges import JUDGES, SIDES, judge_functions, load_prompts  # noqa: E402
from apo_online.evaluation.report_json import write_json  # noqa: E402


def read_prompts(texts: list[str], prompts_file: str | None, config) -> list[PromptExample]:
    """--prompt texts, then the file's prompts, each as one user turn; an empty prompt is an error."""
    examples = []
    for number, text in enumerate(texts, 1):
        if not text.strip():
            raise ValueError(f"--prompt number {number}: empty prompt")
        examples.append(PromptExample(f"prompt:{number}", [{"role": "user", "content": text}]))
    if prompts_file and not Path(prompts_file).is_file():
        raise ValueError(f"{prompts_file}: file not found")
    if prompts_file and Path(prompts_file).suffix == ".txt":
        lines = Path(prompts_file).read_text(encoding="utf-8").splitlines()
        examples += [PromptExample(f"{prompts_file}:{number}", [{"role": "user", "content": line.strip()}])
                     for number, line in enumerate(lines, 1) if line.strip()]
    elif prompts_file:
        examples += load_prompts(prompts_file, config)
    if not examples:
        raise ValueError("no prompts: give --prompt TEXT (repeatable) or --prompts FILE")
    return examples


def default_judges(loaded: LoadedRun) -> list[str]:
    """The RM always; the gold judge on the built-in tasks, whose hidden queries it was trained on."""
    return ["rm", "gold"] if loaded.config.data.dataset_name in BUILTIN_TASKS else ["rm"]


def generate(loaded: LoadedRun, examples: list[PromptExample], judges: list[str], samples_per_prompt: int = 1,
             max_new_tokens: int | None = None, temperature: float | None = None, seed: int = 0) -> dict:
    """{"source", "prompts": [{"prompt", "policy": [answer], "reference": [answer]}]}; an answer is
    {"text", "stopped", "<judge>_score" for each judge}."""
    if "gold" in judges and loaded.config.data.dataset_name not in BUILTIN_TASKS:
        raise ValueError("the gold judge is trained on the embedded task's hidden queries only: use --judges rm")
    if "rm" in judges and loaded.config.model.reward_model_path:
        raise ValueError("this run's RM is a separate model (model.reward_model_path), which this script does not "
                         "load: use --judges gold, or none")
    dc, rc = loaded.config.data, loaded.config.rollout
    encoder = PromptEncoder(loaded.tokenizer, dc.max_prompt_tokens, "truncate", dc.max_response_tokens,
                            dc.system_prompt)
    encoded = encoder.encode_prompts(examples)
    questions = [question_text(example.messages) for example in examples]
    prompt_ids = [p.input_ids for p in encoded]
    functions = judge_functions(loaded, judges)
    result = {"source": loaded.source, "judges": judges, "prompts_truncated": encoder.truncated_prompts,
              "max_prompt_tokens": dc.max_prompt_tokens, "prompts": [{"prompt": q} for q in questions]}
    for side in SIDES:
        torch.manual_seed(seed)  # the same seed on both sides
        s = sample_responses(loaded.backbone, loaded.tokenizer, prompt_ids, side, samples_per_prompt,
                             max_new_tokens or rc.max_new_tokens, temperature or rc.temperature, rc.top_k, rc.top_p)
        row_questions = [questions[i] for i in s.prompt_positions]
        scores = {name: judge(s.prompt_ids, row_questions, s.response_ids, s.texts).tolist()
                  for name, judge in functions.items()}
        for row, position in enumerate(s.prompt_positions):
            answer = {"text": s.texts[row], "stopped": bool(s.has_eos[row])}
            answer.update({f"{name}_score": values[row] for name, values in scores.items()})
            result["prompts"][position].setdefault(side, []).append(answer)
    return result


def format_answers(result: dict) -> str:
    lines = []
    if result["prompts_truncated"]:
        lines.append(f"({result['prompts_truncated']} prompts are longer than the run's data.max_prompt_tokens="
                     f"{result['max_prompt_tokens']}: they keep their last tokens, as in training)")
    for number, item in enumerate(result["prompts"], 1):
        lines.append(f"[{number}] {item['prompt']}")
        for side in SIDES:
            for answer in item[side]:
                scores = "  ".join(f"{name} {answer[f'{name}_score']:+7.3f}" for name in result["judges"])
                text = answer["text"].strip().replace("\n", " ") + ("" if answer["stopped"] else " ...")
                lines.append(f"  {side:<10} {scores}  | {text}")
    for side in SIDES:
        means = [f"{name} {_mean(result, side, name):+.3f}" for name in result["judges"]]
        lines.append(f"mean {side:<10} " + "  ".join(means))
    return "\n".join(lines)


def _mean(result: dict, side: str, judge: str) -> float:
    values = [a[f"{judge}_score"] for item in result["prompts"] for a in item[side]]
    return sum(values) / len(values)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="run output_dir, its final/, a checkpoint or its adapters/")
    parser.add_argument("--prompt", action="append", default=[], help="a prompt (repeatable)")
    parser.add_argument("--prompts", help=".txt (one prompt per line) or a prompts file (.json/.jsonl/.parquet)")
    parser.add_argument("--judges", help=f"comma-separated, from {', '.join(JUDGES)} (default: rm, plus gold on the "
                                         f"embedded task)")
    parser.add_argument("--samples_per_prompt", type=int, default=1)
    parser.add_argument("--max_new_tokens", type=int, default=None, help="default: the run's rollout setting")
    parser.add_argument("--temperature", type=float, default=None, help="default: the run's rollout setting")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", help="also write the answers as JSON here")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if not args.prompt and not args.prompts:
        parser.error("give --prompt TEXT (repeatable) or --prompts FILE")
    loaded = load_run(args.run, "cuda" if torch.cuda.is_available() else "cpu")
    judges = [j.strip() for j in args.judges.split(",") if j.strip()] if args.judges else default_judges(loaded)
    unknown = [j for j in judges if j not in JUDGES]
    if unknown:
        parser.error(f"unknown judge(s) {unknown}: choose from {', '.join(JUDGES)}")
    try:
        examples = read_prompts(args.prompt, args.prompts, loaded.config)
        result = generate(loaded, examples, judges, args.samples_per_prompt, args.max_new_tokens, args.temperature,
                          args.seed)
    except ValueError as err:
        parser.exit(2, f"error: {err}\n")
    print(f"answers of {result['source']} (policy) and its base model (reference), seed {args.seed}")
    print(format_answers(result))
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        write_json(args.output, result)
        print(f"wrote {args.output}")
    return result


if __name__ == "__main__":
    main()
