"""Who scores responses: the shared backbone's "reward" adapter (default) or a separate full reward model.

Both scorers take the same inputs — policy-tokenizer prompt ids, the prompt's chat messages and policy-tokenizer
response ids — and return one score per row, with gradients (wrap calls in no_grad to score without them):
  SharedRewardScorer    reward adapter + head of the backbone, on the policy's own token ids
  SeparateRewardScorer  an AutoModelForSequenceClassification (num_labels=1) with its own tokenizer: the response
                        is decoded and the conversation re-rendered with the reward model's chat template, since
                        its tokenizer and format may differ from the policy's
Each can snapshot and restore its trainable weights (refit-from-base mode of the APO RM step).
"""

from __future__ import annotations

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from apo_online.backbone import SharedPrefix
from apo_online.data.canonical import Messages, join_prompt_response, left_pad, right_pad
from apo_online.model_loading import DTYPES, ensure_distinct_pad_token, resolve_model_path


def _copy_into(params: dict[str, torch.nn.Parameter], state: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(value)


def reward_role_scores(model, device, pad_id: int, prompt_ids: list[list[int]], responses: list[list[int]],
                       shared_prefix: bool = True):
    """The backbone's reward role on rows of (prompt ids, response ids) -> [B] scores, with gradients.
    The one scoring path of the shared RM outside a rollout (rollout.score_sequences scores every role together).

    shared_prefix: when rows repeat a prompt (a gold answer and its samples, a human pair), run each distinct prompt
    once and continue it with each of its responses (SharedBackbone.forward's prefix): same scores and gradients up
    to float rounding, fewer tokens through the model."""
    distinct: dict[tuple[int, ...], int] = {}
    rows = [distinct.setdefault(tuple(ids), len(distinct)) for ids in prompt_ids]
    if shared_prefix and len(distinct) < len(rows):
        prompts, prompt_mask = left_pad([list(ids) for ids in distinct], pad_id)
        response_ids, response_mask = right_pad(responses, pad_id)
        prefix = SharedPrefix(prompts.to(device), prompt_mask.to(device), torch.tensor(rows, device=device))
        return model(response_ids.to(device), response_mask.to(device), roles=("reward",), prefix=prefix)["reward"]
    input_ids, attention_mask, _ = join_prompt_response(prompt_ids, responses, pad_id)
    return model(input_ids.to(device), attention_mask.to(device), roles=("reward",))["reward"]


class SharedRewardScorer:
    """The reward adapter and head of the shared backbone."""

    def __init__(self, ctx, pad_id: int, shared_prefix: bool = True):
        self.ctx, self.pad_id, self.shared_prefix = ctx, pad_id, shared_prefix

    def score(self, prompt_ids: list[list[int]], messages: list[Messages], responses: list[list[int]]) -> torch.Tensor:
        return reward_role_scores(self.ctx.model, self.ctx.device, self.pad_id, prompt_ids, responses,
                                  self.shared_prefix)

    def weights(self) -> dict[str, torch.Tensor]:
        return self.ctx.read_role_weights("reward")  # whole even under ZeRO-3

    def load_weights(self, state: dict[str, torch.Tensor]) -> None:
        self.ctx.write_weights(state)  # DeepSpeed's fp32 master copies too


def load_separate_reward_model(path: str, dtype: str = "float32", cache_dir: str | None = None):
    """(model, tokenizer) of a scalar reward model; its pad token is made distinct from EOS like the policy's."""
    folder = resolve_model_path(path, cache_dir)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=1, dtype=DTYPES[dtype])
    ensure_distinct_pad_token(tokenizer, model)
    tokenizer.padding_side = "right"
    tokenizer.truncation_side = "left"  # keep the response, the part being judged
    model.config.pad_token_id = tokenizer.pad_token_id  # the classifier pools at the last non-pad token
    model.eval()  # dropout off, as for every other role
    return model, tokenizer


class SeparateRewardScorer:
    """A full sequence-classification reward model, trained in full by the APO RM step."""

    def __init__(self, ctx, model, tokenizer, policy_tokenizer, max_length: int = 512):
        self.ctx, self.model, self.tokenizer = ctx, model, tokenizer
        self.policy_tokenizer, self.max_length = policy_tokenizer, max_length

    def texts(self, messages: list[Messages], responses: list[list[int]]) -> list[str]:
        texts = []
        for conversation, response in zip(messages, responses):
            reply = self.policy_tokenizer.decode(response, skip_special_tokens=True)
            turns = list(conversation) + [{"role": "assistant", "content": reply}]
            if getattr(self.tokenizer, "chat_template", None):
                texts.append(self.tokenizer.apply_chat_template(turns, tokenize=False))
            else:
                texts.append("\n".join(f"{t['role'].capitalize()}: {t['content']}" for t in turns))
        return texts

    def score(self, prompt_ids: list[list[int]], messages: list[Messages], responses: list[list[int]]) -> torch.Tensor:
        batch = self.tokenizer(self.texts(messages, responses), padding=True, truncation=True,
                               max_length=self.max_length, return_tensors="pt", add_special_tokens=False)
        batch = {k: v.to(self.ctx.device) for k, v in batch.items()}
        return self.model(**batch).logits[:, 0].float()

    def _params(self) -> dict[str, torch.nn.Parameter]:
        return dict(self.ctx.accelerator.unwrap_model(self.model).named_parameters())

    def weights(self) -> dict[str, torch.Tensor]:
        return {name: p.detach().clone() for name, p in self._params().items() if p.requires_grad}

    def load_weights(self, state: dict[str, torch.Tensor]) -> None:
        _copy_into(self._params(), state)
