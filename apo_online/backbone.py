"""One base causal LM shared by every role through peft LoRA adapters.

Roles:
  policy     adapter "policy"  + the LM head          -> token log-probs
  value      adapter "value"   + a zero-initialised scalar head, per token
  reward     adapter "reward"  + a scalar head, read at the last real token
  reference  all adapters disabled (the untouched base) -> token log-probs
Only the adapters of the roles a game uses are built (`adapter_roles_for`): policy and reward always, value (adapter and
head) only for a policy optimizer that trains it (PPO), so DPO, RJS and GRPO games carry no unused critic.
The base weights stay frozen. `SharedBackbone.forward` computes several roles in ONE call so that DDP and DeepSpeed
see one forward per backward; the adapter switch inside it always restores the previous adapter (try/finally).
"""

from __future__ import annotations

import contextlib
from contextlib import nullcontext
import functools
import inspect
import math
import warnings
from dataclasses import dataclass
from typing import NamedTuple

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn
from transformers.modeling_layers import GradientCheckpointingLayer
from trl.trainer.utils import selective_log_softmax

from apo_online.data.canonical import position_ids_from_mask
from apo_online.merged_sampling import folded_into_weights
from apo_online.shared_prefill import generate_repeating_prompts, generate_sharing_prompts

ADAPTER_ROLES = ("policy", "value", "reward")
REQUIRED_ADAPTER_ROLES = ("policy", "reward")  # every game samples with the policy and scores with the reward role
REFERENCE = "reference"
ALL_ROLES = ADAPTER_ROLES + (REFERENCE,)


def adapter_roles_for(trained_roles) -> tuple[str, ...]:
    """The adapters a game builds: policy and reward, plus those of `trained_roles` (a policy optimizer's roles, e.g.
    PPO's ("policy", "value")), in ADAPTER_ROLES order."""
    unknown = set(trained_roles) - set(ADAPTER_ROLES)
    if unknown:
        raise ValueError(f"unknown adapter roles {sorted(unknown)}: expected some of {ADAPTER_ROLES}")
    wanted = set(REQUIRED_ADAPTER_ROLES) | set(trained_roles)
    return tuple(role for role in ADAPTER_ROLES if role in wanted)


@dataclass(frozen=True)
class LoraSettings:
    r: int = 16
    alpha: int = 32
    target_modules: str = "all-linear"

    def to_peft(self) -> LoraConfig:
        targets = self.target_modules
        if targets != "all-linear":
            targets = [name.strip() for name in targets.split(",") if name.strip()]
        # Dropout 0 in every role (docs/design.md, PPO checklist): log-probs at sampling and update time must agree.
        return LoraConfig(r=self.r, lora_alpha=self.alpha, target_modules=targets, lora_dropout=0.0, bias="none",
                          task_type="CAUSAL_LM")


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last real token of each row, for left- or right-padded rows. [B, L] -> [B]."""
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return (attention_mask.long() * positions).argmax(-1)


@functools.cache
def _cache_argument(decoder_class: type) -> str:
    """The decoder's key/value cache argument: `cache` in newer transformers (past_key_values is deprecated there),
    `past_key_values` in older 5.x. Read once per class: the RM step calls this every forward."""
    return "cache" if "cache" in inspect.signature(decoder_class.forward).parameters else "past_key_values"


class SharedPrefix(NamedTuple):
    """Prompts that several rows share, scored once (SharedBackbone.forward's `prefix`).

    input_ids, attention_mask: [G, P] the distinct prompts, left-padded; rows: [B] which prompt (0..G-1) each row of
    responses continues."""
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    rows: torch.Tensor


class SharedBackbone(nn.Module):
    """Base LM + adapters policy/reward (+ value) + reward (+ value) head. Build with `SharedBackbone.build`.

    `adapter_roles` are the adapters it holds; without "value", value_head is None and the value role is refused."""

    def __init__(self, peft_model: PeftModel, adapter_roles: tuple[str, ...] = ADAPTER_ROLES):
        super().__init__()
        self.peft_model = peft_model
        self.adapter_roles = tuple(adapter_roles)
        hidden = peft_model.get_base_model().config.hidden_size
        value_head = nn.Linear(hidden, 1)  # drawn even when dropped, for the same reason as in build
        self.value_head = value_head if "value" in self.adapter_roles else None
        self.reward_head = nn.Linear(hidden, 1)
        if self.value_head is not None:  # value head zero-init (checklist): first advantages = returns
            nn.init.zeros_(self.value_head.weight)
            nn.init.zeros_(self.value_head.bias)
        nn.init.normal_(self.reward_head.weight, std=1.0 / math.sqrt(hidden + 1))
        nn.init.zeros_(self.reward_head.bias)
        self._adapter_params = [p for n, p in peft_model.named_parameters() if "lora_" in n]
        self.merged_sampling = True  # generate with the policy folded into the weights (the game sets it from config)
        self.eval()  # dropout off in all roles; training mode is never needed

    @classmethod
    def build(cls, causal_lm: nn.Module, lora: LoraSettings,
              adapter_roles: tuple[str, ...] = ADAPTER_ROLES) -> "SharedBackbone":
        """Wrap `causal_lm` with one LoRA adapter per role of `adapter_roles` (policy and reward at least; see
        adapter_roles_for) and their heads."""
        adapter_roles = adapter_roles_for(adapter_roles)
        peft_config = lora.to_peft()
        with warnings.catch_warnings():  # peft still reads transformers' deprecated is_gradient_checkpointing
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
            peft_model = get_peft_model(causal_lm, peft_config, adapter_name="policy")
        for role in ADAPTER_ROLES[1:]:
            peft_model.add_adapter(role, peft_config)
            if role not in adapter_roles:
                # initialised and dropped: the random draws stay those of a full backbone, so the reward role starts
                # from the same weights whichever the policy optimizer (shared warm-up cache, comparable seeds)
                peft_model.delete_adapter(role)
        backbone = cls(peft_model, adapter_roles)
        backbone._activate("policy")
        return backbone

    def train(self, mode: bool = True) -> "SharedBackbone":
        # Stay in eval mode: LoRA dropout is 0 and base dropout is disabled, and peft refuses mixed-adapter batches
        # in training mode. Gradients do not depend on the module mode.
        super().train(False)
        self._sync_checkpointed_layers()
        return self

    def _sync_checkpointed_layers(self) -> None:
        """transformers checkpoints a layer only while that layer is in training mode. Mark just the layers that
        have checkpointing on as training (the flag alone, not their children: attention and dropout stay in eval),
        so that model.gradient_checkpointing takes effect in this always-eval backbone."""
        for module in self.peft_model.modules():
            if isinstance(module, GradientCheckpointingLayer):
                module.training = bool(module.gradient_checkpointing)

    # Gradient checkpointing lives on the base model; trl's unwrap_model_for_generation toggles it around generate.
    # transformers >= 5.20 calls it "activation checkpointing" and deprecates the old names.
    def _checkpointing_api(self, new: str, old: str):
        base = self.peft_model.get_base_model()
        return getattr(base, new) if hasattr(type(base), new) else getattr(base, old)

    @property
    def is_gradient_checkpointing(self) -> bool:
        return self._checkpointing_api("is_activation_checkpointing", "is_gradient_checkpointing")

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None) -> None:
        kwargs = gradient_checkpointing_kwargs or {"use_reentrant": False}
        base = self.peft_model.get_base_model()
        if hasattr(type(base), "activation_checkpointing_enable"):
            base.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            base.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        self._sync_checkpointed_layers()

    def gradient_checkpointing_disable(self) -> None:
        self._checkpointing_api("activation_checkpointing_disable", "gradient_checkpointing_disable")()
        self._sync_checkpointed_layers()

    # ---------------------------------------------------------------------------------------------------------------
    # adapter switching
    # ---------------------------------------------------------------------------------------------------------------
    def _activate(self, role: str) -> None:
        self.peft_model.set_adapter(role)
        # peft's set_adapter freezes the other adapters; keep every adapter trainable so that the optimizer's and
        # DDP's parameter sets never change. Only the active adapter takes part in a forward, so only it gets grads.
        for param in self._adapter_params:
            param.requires_grad_(True)

    @property
    def active_role(self) -> str:
        active = self.peft_model.active_adapter
        return active if isinstance(active, str) else active[0]

    @contextlib.contextmanager
    def role(self, role: str):
        """Run the body with `role`'s adapter active (or all adapters off for "reference"); always restore."""
        if role not in ALL_ROLES:
            raise ValueError(f"unknown role {role!r}: expected one of {ALL_ROLES}")
        if role != REFERENCE and role not in self.adapter_roles:
            raise ValueError(f"this backbone has no {role!r} adapter (built with {', '.join(self.adapter_roles)}: "
                             f"only a policy optimizer whose roles include {role!r} gets one)")
        if role == REFERENCE:
            try:
                with self.peft_model.disable_adapter():
                    yield
            finally:
                for param in self._adapter_params:  # disable_adapter's exit re-runs set_adapter (freezes others)
                    param.requires_grad_(True)
            return
        previous = self.active_role
        self._activate(role)
        try:
            yield
        finally:
            self._activate(previous)

    # ---------------------------------------------------------------------------------------------------------------
    # parameters by role
    # ---------------------------------------------------------------------------------------------------------------
    def role_parameters(self, role: str) -> list[nn.Parameter]:
        """Trainable parameters of one role: its adapter (+ its scalar head); none for a role this backbone lacks."""
        params = [p for n, p in self.peft_model.named_parameters() if "lora_" in n and f".{role}." in n]
        if role == "value" and self.value_head is not None:
            params += list(self.value_head.parameters())
        elif role == "reward":
            params += list(self.reward_head.parameters())
        return params

    # ---------------------------------------------------------------------------------------------------------------
    # forward
    # ---------------------------------------------------------------------------------------------------------------
    def _hidden(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        decoder = self.peft_model.get_base_model().get_decoder()
        out = decoder(input_ids=input_ids, attention_mask=attention_mask,
                      position_ids=position_ids_from_mask(attention_mask), use_cache=False)
        return out.last_hidden_state

    def _reward(self, hidden: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
        """Reward head on hidden [B, L, H] at positions last [B] -> [B] float32 (the head stays float32)."""
        pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
        return self.reward_head(pooled.to(self.reward_head.weight.dtype)).squeeze(-1).float()

    def _prefix_hidden(self, role: str, response_ids: torch.Tensor, response_mask: torch.Tensor,
                       prefix: SharedPrefix):
        """`role`'s hidden states on prompt + response rows, each distinct prompt run once: its keys and values are
        gathered for every row that continues it, and the gradients of all those rows flow back through the gather
        into the one prompt forward. -> (the prompts' hidden states [G, P, H], the responses' [B, R, H])."""
        decoder = self.peft_model.get_base_model().get_decoder()
        cache_name = _cache_argument(type(decoder))
        with self.role(role):
            prompt = decoder(input_ids=prefix.input_ids, attention_mask=prefix.attention_mask,
                             position_ids=position_ids_from_mask(prefix.attention_mask), use_cache=True)
            cache = getattr(prompt, cache_name)
            cache.reorder_cache(prefix.rows)  # [G, ...] -> [B, ...] per layer, differentiable
            mask = torch.cat([prefix.attention_mask[prefix.rows], response_mask], 1)
            positions = position_ids_from_mask(mask)[:, prefix.input_ids.shape[1]:]
            hidden = decoder(input_ids=response_ids, attention_mask=mask, position_ids=positions, use_cache=True,
                             **{cache_name: cache}).last_hidden_state
        return prompt.last_hidden_state, hidden

    def _role_with_prefix(self, role: str, response_ids: torch.Tensor, response_mask: torch.Tensor,
                          prefix: SharedPrefix, temperature: float) -> torch.Tensor:
        """forward's outputs of one role for rows given as a prefix + right-padded responses [B, R]: the same as the
        joined rows' up to float rounding (tests/test_backbone.py)."""
        if role == "reward":
            return self._reward_with_prefix(response_ids, response_mask, prefix)
        prompt, hidden = self._prefix_hidden(role, response_ids, response_mask, prefix)
        # the state before each response token: the prompt's last (left-padded: real) position, then the response's
        before = torch.cat([prompt[prefix.rows, -1:], hidden[:, :-1]], 1)
        if role == "value":
            return self.value_head(before.to(self.value_head.weight.dtype)).squeeze(-1).float()
        logits = self.peft_model.get_base_model().get_output_embeddings()(before)
        return selective_log_softmax(logits.float(), response_ids, temperature=temperature)

    def _reward_with_prefix(self, response_ids: torch.Tensor, response_mask: torch.Tensor,
                            prefix: SharedPrefix, drop_last: tuple[int, ...] = (0,)) -> torch.Tensor:
        """The reward role on prompt + response rows (_prefix_hidden). Same scores and gradients as the joined rows,
        up to float rounding (tests/test_backbone.py).

        response_ids, response_mask: [B, R] right-padded -> [B], or [B, K] for K values of drop_last: each row read
        as if its last d response tokens were not there (a causal model's earlier positions never see later tokens,
        so one forward gives them all)."""
        prompt, hidden = self._prefix_hidden("reward", response_ids, response_mask, prefix)
        columns = []
        for dropped in drop_last:
            lengths = (response_mask.long().sum(1) - dropped).clamp(min=0)
            scores = self._reward(hidden, (lengths - 1).clamp(min=0))
            if bool((lengths == 0).any()):  # an empty response is read at its prompt's last token, as in a joined row
                prompt_scores = self._reward(prompt[prefix.rows], torch.full_like(lengths, -1))
                scores = torch.where(lengths > 0, scores, prompt_scores)
            columns.append(scores)
        return columns[0] if len(columns) == 1 else torch.stack(columns, 1)

    @torch.no_grad()
    def reward_with_and_without_last_token(self, response_ids: torch.Tensor, response_mask: torch.Tensor,
                                           prefix: SharedPrefix) -> torch.Tensor:
        """[B, 2]: the reward of each prompt + response row, and of the same row without its last response token
        (e.g. a response scored with and without its stop token), from one forward with the prefix shared."""
        return self._reward_with_prefix(response_ids, response_mask, prefix, drop_last=(0, 1))

    def _joined(self, response_ids: torch.Tensor, response_mask: torch.Tensor, prefix: SharedPrefix):
        """The rows a prefix stands for, written out: (input_ids, attention_mask) [B, P+R]."""
        return (torch.cat([prefix.input_ids[prefix.rows], response_ids], 1),
                torch.cat([prefix.attention_mask[prefix.rows], response_mask], 1))

    def _token_logprobs(self, hidden: torch.Tensor, input_ids: torch.Tensor, start: int, temperature: float):
        lm_head = self.peft_model.get_base_model().get_output_embeddings()
        logits = lm_head(hidden[:, start - 1 : -1])  # position t-1 predicts token t; only response positions
        return selective_log_softmax(logits.float(), input_ids[:, start:], temperature=temperature)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        roles: tuple[str, ...] = ("policy",),
        response_start: int | None = None,
        temperature: float = 1.0,
        prefix: SharedPrefix | None = None,
    ) -> dict[str, torch.Tensor]:
        """Compute several roles on the same sequences in one call.

        input_ids, attention_mask: [B, L] (prompt left-padded to P = response_start, then the response).
        Returns, per requested role:
          "policy", "reference": log pi(y_t | ...) / temperature-scaled, for tokens input_ids[:, P:]  -> [B, L-P]
          "value":  V(s_t) at the state before each response token                               -> [B, L-P]
          "reward": r(x, y) read at the last real token (any padding side; response_start unused)   -> [B]
        With `prefix`, input_ids / attention_mask are the right-padded responses [B, R] (response_start unused) and
        the prompts come from the prefix, each distinct prompt run once.
        """
        if prefix is not None:
            if not self.is_gradient_checkpointing:
                return {role: self._role_with_prefix(role, input_ids, attention_mask, prefix, temperature)
                        for role in roles}
            # checkpointed layers keep no cache: run the rows written out
            input_ids, attention_mask = self._joined(input_ids, attention_mask, prefix)
            response_start = prefix.input_ids.shape[1]
        out: dict[str, torch.Tensor] = {}
        needs_start = any(r != "reward" for r in roles)
        if needs_start and (response_start is None or not 0 < response_start < input_ids.shape[1]):
            raise ValueError(f"response_start must be in (0, {input_ids.shape[1]}), got {response_start}")
        for role in roles:
            with self.role(role):
                hidden = self._hidden(input_ids, attention_mask)
            if role in ("policy", REFERENCE):
                out[role] = self._token_logprobs(hidden, input_ids, response_start, temperature)
            elif role == "value":  # the heads stay float32 whatever the base dtype
                hidden = hidden.to(self.value_head.weight.dtype)
                out[role] = self.value_head(hidden[:, response_start - 1 : -1]).squeeze(-1).float()
            else:
                out[role] = self._reward(hidden, last_token_index(attention_mask))
        return out

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, share_prompts: bool = True,
                 **generation_kwargs) -> torch.Tensor:
        """Sample continuations with the policy adapter. Returns [B * num_return_sequences, P + new tokens], or
        transformers' generate output (sequences, logits, ...) when generation_kwargs ask for a dict.

        With merged_sampling (rollout.merged_sampling) the policy adapter is folded into the weights for the call and
        the adapters are off (merged_sampling.py): the same samples up to float rounding, no adapter per token.
        share_prompts: several samples of a prompt run its prefill once (shared_prefill.py); the same samples."""
        generate = generate_sharing_prompts if share_prompts else generate_repeating_prompts
        with folded_into_weights(self.peft_model, "policy") if self.merged_sampling else nullcontext(False) as folded:
            with self.role(REFERENCE if folded else "policy"):
                return generate(self.peft_model, input_ids, attention_mask, **generation_kwargs)
