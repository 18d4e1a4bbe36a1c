"""The table of bad inputs, as a user meets them: the recipe's command line exits with status 2 and prints one line
that says where the problem is (file, row, field, or the config field) and what was expected. No traceback."""

import json
from pathlib import Path

import pytest

from apo_online.cli import main
from conftest import REPO, tiny_overrides


def jsonl(path: Path, rows: list) -> str:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def prompts_file(tmp_path, rows) -> list[str]:
    return ["--data.dataset_name", jsonl(tmp_path / "prompts.jsonl", rows)]


def tokenizer_without(attribute: str):
    """A model folder: the tiny model whose tokenizer lacks `attribute` (pad_token or eos_token)."""

    def make(tmp_path) -> list[str]:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from apo_online.model_loading import resolve_model_path

        source = resolve_model_path("tiny-llama")
        tokenizer = AutoTokenizer.from_pretrained(source)
        setattr(tokenizer, attribute, None)
        folder = tmp_path / f"no-{attribute}"
        tokenizer.save_pretrained(folder)
        AutoModelForCausalLM.from_pretrained(source).save_pretrained(folder)
        return ["--model.model_name_or_path", str(folder)]

    return make


GOOD = {"prompt": "What is AI?", "gold": "Artificial intelligence."}

# (case, argv maker, the expected error line with {tmp} for the test folder)
BAD_INPUTS = [
    ("missing field", lambda t: prompts_file(t, [GOOD, {"gold": "b"}]),
     "error: {tmp}/prompts.jsonl, row 2, field 'prompt': missing (expected a string or a list of messages)"),
    ("wrong type", lambda t: prompts_file(t, [GOOD, {"prompt": 5}]),
     "error: {tmp}/prompts.jsonl, row 2, field 'prompt': expected a string or a non-empty list of messages, got 5"),
    ("empty file", lambda t: prompts_file(t, []), "error: {tmp}/prompts.jsonl: empty file"),
    ("not UTF-8", lambda t: ["--data.dataset_name", str(_latin1(t))],
     "error: {tmp}/latin1.jsonl: not UTF-8 text (invalid continuation byte at byte 15)"),
    ("missing file", lambda t: ["--data.dataset_name", str(t / "nope.jsonl")],
     "error: {tmp}/nope.jsonl: file not found"),
    ("duplicate ids", lambda t: prompts_file(t, [dict(GOOD, id="q1"), dict(GOOD, id="q1")]),
     "error: {tmp}/prompts.jsonl, row 2, field 'id': duplicate prompt id 'q1' (first at row 1)"),
    ("gold for an unknown prompt", lambda t: prompts_file(t, [dict(GOOD, id="q1")]) + [
        "--data.gold_file", jsonl(t / "golden.jsonl", [{"query_id": "q2", "golden": "Yes."}])],
     "error: {tmp}/golden.jsonl, row 1, field 'query_id': query_id 'q2' matches no prompt id of data.dataset_name"),
    ("unknown optimizer", lambda t: ["--game.policy_optimizer", "nope"],
     "error: unknown policy optimizer 'nope'"),
    ("inconsistent batch sizes", lambda t: ["--rollout.prompts_per_step", "6", "--ppo.num_minibatches", "4"],
     "error: rollout.prompts_per_step x rollout.samples_per_prompt = 6 rollouts per process must divide evenly into "
     "ppo.num_minibatches x ppo.gradient_accumulation_steps = 4 micro-batches"),
    ("wrong config type", lambda t: ["--game.total_steps", "many"],
     "error: command line: game.total_steps: expected int, got 'many'"),
    ("tokenizer without eos", tokenizer_without("eos_token"), "has no eos_token, the stop token of generation"),
    ("every row skipped", lambda t: prompts_file(t, [{"prompt": ""}, {"prompt": "Hi?", "gold": ""}]) + [
        "--data.skip_bad_rows", "true"],
     "error: {tmp}/prompts.jsonl: no usable prompts: 2 rows skipped (data.skip_bad_rows): 1 x field 'prompt': empty "
     "string (first: {tmp}/prompts.jsonl, row 1); 1 x field 'gold': empty string (first: {tmp}/prompts.jsonl, row 2)"),
    ("rows skipped, the rest too long", lambda t: prompts_file(t, [{"prompt": ""}, GOOD]) + [
        "--data.skip_bad_rows", "true", "--data.prompt_overflow", "reject", "--data.max_prompt_tokens", "8",
        "--rm.allow_untrained", "true"],
     "error: no usable prompts: all 1 prompts are longer than data.max_prompt_tokens=8 tokens (data.prompt_overflow: "
     "reject); besides, 1 row skipped (data.skip_bad_rows): 1 x field 'prompt': empty string (first: "
     "{tmp}/prompts.jsonl, row 1)"),
    ("prompts without preference pairs", lambda t: prompts_file(t, [GOOD]),
     "error: the reward model would be untrained when the policy starts to optimise it: the data has no human "
     "preference pairs (data.preference_file) to warm it up on, and no trained RM is given (model.reward_model_path)"),
    ("no warm-up", lambda t: ["--rm.warmup_steps", "0"], "error: the reward model would be untrained when the policy "
     "starts to optimise it: rm.warmup_steps is 0"),
    ("a flag of an optimizer that is not running", lambda t: ["--dpo.loss_type", "foo"],
     "error: command line: --dpo.loss_type sets the dpo optimizer, but this game runs game.policy_optimizer=ppo; add "
     "--game.policy_optimizer dpo or drop --dpo.loss_type"),
]


def _latin1(tmp_path) -> Path:
    path = tmp_path / "latin1.jsonl"
    path.write_bytes('{"prompt": "caf\xe9"}\n'.encode("latin-1"))
    return path


def run_recipe(tmp_path, extra: list[str], capsys) -> tuple[int, list[str]]:
    status = main(tiny_overrides(tmp_path / "run") + extra, default_yaml=REPO / "apo_online/recipes/apo_ppo.yaml")
    err = capsys.readouterr().err
    return status, [line for line in err.splitlines() if line.startswith("error:")]


@pytest.mark.parametrize("case, make_argv, expected", BAD_INPUTS, ids=[case for case, _, _ in BAD_INPUTS])
def test_bad_input_gives_one_clear_line_and_status_2(tmp_path, tiny_model_path, capsys, case, make_argv, expected):
    status, errors = run_recipe(tmp_path, make_argv(tmp_path), capsys)
    assert status == 2
    assert len(errors) == 1, errors
    expected = expected.format(tmp=tmp_path)
    assert errors[0].startswith(expected) if expected.startswith("error:") else expected in errors[0], errors[0]


def test_tokenizer_without_pad_token_gets_one_distinct_from_eos(tmp_path, tiny_model_path, capsys):
    """Not an error: a pad token that is not EOS is chosen (or added), else EOS would be masked out of training."""
    from apo_online.config import ModelConfig
    from apo_online.model_loading import load_causal_lm

    folder = tokenizer_without("pad_token")(tmp_path)[1]
    model, tokenizer = load_causal_lm(ModelConfig(model_name_or_path=folder))
    assert tokenizer.pad_token_id is not None and tokenizer.pad_token_id != tokenizer.eos_token_id
    assert model.get_input_embeddings().weight.shape[0] >= len(tokenizer)


def test_untrained_rm_runs_when_allowed_and_says_so(tmp_path, tiny_model_path, caplog):
    """The opt-in: prompts without pairs play, with a warning and rm/untrained_at_start = 1 at step 0."""
    from apo_online.run.log import read_metrics

    rows = [{"prompt": f"Question {k}?", "gold": f"Answer {k}."} for k in range(8)]
    argv = tiny_overrides(tmp_path / "run", **{"game.total_steps": 1}) + prompts_file(tmp_path, rows) + [
        "--rm.allow_untrained", "true"]
    assert main(argv, default_yaml=REPO / "apo_online/recipes/apo_ppo.yaml") == 0
    assert "starts against an untrained reward model" in caplog.text
    start = read_metrics(tmp_path / "run" / "metrics.jsonl")[0]
    assert start["step"] == 0 and start["rm/untrained_at_start"] == 1.0 and start["data/preference_pairs"] == 0.0


def test_dry_run_prints_the_plan_without_training(tmp_path, tiny_model_path, capsys):
    argv = tiny_overrides(tmp_path / "run") + ["--dry_run"]
    assert main(argv, default_yaml=REPO / "apo_online/recipes/apo_ppo.yaml") == 0
    out = capsys.readouterr().out
    assert "data: 64 policy prompts (64 with a gold response), 64 human pairs" in out
    assert "RM warm-up: 2 Bradley-Terry steps on 64 human pairs" in out
    assert "per step and process: 4 prompts x 1 samples = 4 rollouts" in out
    assert not (tmp_path / "run").exists()  # nothing written, nothing trained


@pytest.mark.parametrize("case, make_argv, expected", [BAD_INPUTS[0], BAD_INPUTS[-3]], ids=["bad row", "no pairs"])
def test_dry_run_stops_on_bad_data_like_a_run(tmp_path, tiny_model_path, capsys, case, make_argv, expected):
    status, errors = run_recipe(tmp_path, make_argv(tmp_path) + ["--dry_run"], capsys)
    assert status == 2 and len(errors) == 1 and errors[0].startswith(expected.format(tmp=tmp_path))
