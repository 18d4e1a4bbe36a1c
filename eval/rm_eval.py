"""Reward-model evaluation: preference accuracy and calibration (ECE, ACE, MCE) plus a reliability diagram.

    python eval/rm_eval.py --run runs/apo_ppo                             # the run's final RM
    python eval/rm_eval.py --run runs/apo_ppo/checkpoints/step-000010     # a checkpoint's RM
    python eval/rm_eval.py --base smollm2-135m-instruct                    # a freshly initialised RM
    python eval/rm_eval.py --run runs/apo_ppo --pairs my_pairs.jsonl       # any preference file (TRL, HH, APO)

Pairs default to the held-out eval pairs of the run's task (the embedded task's `eval` split). The binning is the
APO reference's (apo_online/rm/calibration.py): both orientations of each pair, 10 equal bins on [0, 1].
Writes rm_eval.json and reliability.png (rm_eval_<pairs file>.json and reliability_<pairs file>.png with --pairs,
so that another file does not overwrite the held-out result) to --output_dir, by default beside what was evaluated:
<run>/rm_eval, <base folder>/rm_eval for a local --base folder, runs/rm_eval_base/<name> for a built-in or hub name.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: import this checkout's packages, not an installed copy
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from apo_online.rm.calibration import pair_calibration, preference_accuracy  # noqa: E402
from apo_online.config import load_config  # noqa: E402
from apo_online.data.canonical import PreferencePair, PromptEncoder, encode_pairs  # noqa: E402
from apo_online.data.formats import convert_rows, read_rows  # noqa: E402
from apo_online.data.task import load_task_data  # noqa: E402
from apo_online.evaluation.game_eval import reward_scores  # noqa: E402
from apo_online.run.loading import LoadedRun, load_fresh, load_run  # noqa: E402
from apo_online.evaluation.plots import reliability_diagram  # noqa: E402
from apo_online.evaluation.report_json import write_json  # noqa: E402

RECIPE_YAML = Path(__file__).resolve().parents[1] / "apo_online" / "recipes" / "apo_ppo_full.yaml"


def load_pairs(pairs_file: str | None, config) -> list[PreferencePair]:
    """Pairs from a preference file (any supported format), else the eval pairs of the run's task."""
    if pairs_file:
        records, _ = convert_rows(read_rows(pairs_file), "auto", skip_bad_rows=False)
        pairs = [r for r in records if isinstance(r, PreferencePair)]
    else:
        pairs = load_task_data(config.data, config.game.seed, config.model).eval_preference_pairs
    if not pairs:
        raise ValueError("no preference pairs to evaluate: pass --pairs FILE (the run's task has no eval pairs)")
    return pairs


def evaluate_reward_model(loaded: LoadedRun, pairs: list[PreferencePair], num_bins: int = 10,
                          batch_size: int = 16) -> dict:
    """Score every pair with the reward role; accuracy, calibration and the raw scores."""
    dc = loaded.config.data
    encoder = PromptEncoder(loaded.tokenizer, dc.max_prompt_tokens, dc.prompt_overflow, dc.max_response_tokens,
                            dc.system_prompt)
    encoded = encode_pairs(encoder, pairs)
    pad_id = loaded.tokenizer.pad_token_id
    prompts = [p.prompt_ids for p in encoded]
    chosen = reward_scores(loaded.backbone, prompts, [p.chosen_ids for p in encoded], pad_id, batch_size)
    rejected = reward_scores(loaded.backbone, prompts, [p.rejected_ids for p in encoded], pad_id, batch_size)
    report = pair_calibration(chosen, rejected, num_bins)
    return {
        "source": loaded.source,
        "pairs": len(encoded),
        "skipped_prompts": len(pairs) - len(encoded),
        "accuracy": preference_accuracy(chosen, rejected),
        "ece": report.ece, "ace": report.ace, "mce": report.mce,
        "mean_margin": float((chosen - rejected).mean()),
        "calibration": report.to_dict(),
        "chosen_scores": chosen.tolist(),
        "rejected_scores": rejected.tolist(),
    }


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--run", help="run output_dir, its final/, a checkpoint folder or its adapters/")
    which.add_argument("--base", help="model name or path: evaluate its freshly initialised RM")
    parser.add_argument("--pairs", help="preference file (.json/.jsonl/.parquet); default: the task's eval pairs")
    parser.add_argument("--output_dir", help="where rm_eval.json and reliability.png go")
    parser.add_argument("--num_bins", type=int, default=10)
    parser.add_argument("--max_pairs", type=int, default=None, help="evaluate only the first N pairs")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=42, help="--base only: seed of the fresh reward head")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.run:
        loaded = load_run(args.run, device)
    else:
        config = load_config(["--model.model_name_or_path", args.base, "--game.seed", str(args.seed)],
                             default_yaml=RECIPE_YAML)
        loaded = load_fresh(config, device)
    output_dir = Path(args.output_dir) if args.output_dir else default_output_dir(args.run, args.base)
    pairs = load_pairs(args.pairs, loaded.config)[: args.max_pairs]
    result = evaluate_reward_model(loaded, pairs, args.num_bins, args.batch_size)
    output_dir.mkdir(parents=True, exist_ok=True)
    suffix = f"_{Path(args.pairs).stem}" if args.pairs else ""  # the held-out result keeps its own name
    report, diagram = output_dir / f"rm_eval{suffix}.json", output_dir / f"reliability{suffix}.png"
    write_json(report, result)
    reliability_diagram(pair_calibration(result["chosen_scores"], result["rejected_scores"], args.num_bins),
                        diagram, title=f"RM {loaded.source}, {result['pairs']} pairs")
    print(f"RM {loaded.source}: {result['pairs']} pairs  accuracy {result['accuracy']:.3f}  ECE {result['ece']:.3f}  "
          f"ACE {result['ace']:.3f}  MCE {result['mce']:.3f}  mean margin {result['mean_margin']:.3f}")
    print(f"wrote {report} and {diagram}")
    return result


def default_output_dir(run: str | None, base: str | None) -> Path:
    """Beside what was evaluated: <run>/rm_eval; <folder>/rm_eval for a local base model; else
    runs/rm_eval_base/<name> (a built-in or hub name has no folder of its own)."""
    if run:
        return Path(run) / "rm_eval"
    if Path(base).is_dir():
        return Path(base) / "rm_eval"
    return Path("runs") / "rm_eval_base" / base.replace("/", "--")


if __name__ == "__main__":
    main()
