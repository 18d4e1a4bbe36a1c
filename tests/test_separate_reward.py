"""A separate full reward model in place of the shared reward adapter."""

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from apo_online.model_loading import load_tokenizer
from apo_online.policy_reward.terms import RewardSum
from apo_online.rollout import collect_rollout


@pytest.fixture
def reward_model_dir(tmp_path, tiny_model_path):
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_path, num_labels=1)
    folder = tmp_path / "tiny-rm"
    model.save_pretrained(folder)
    load_tokenizer("tiny-llama").save_pretrained(folder)
    return folder


def test_separate_reward_model_scores_rollouts_and_is_the_one_trained(tiny_config, single_accelerator,
                                                                      reward_model_dir):
    from apo_online.game import APOGame

    game = APOGame(tiny_config(**{"model.reward_model_path": str(reward_model_dir)}),
                   accelerator=single_accelerator())
    backbone = game.accelerator.unwrap_model(game.model)
    adapter_before = [p.detach().clone() for p in backbone.role_parameters("reward")]
    rm_before = game.scorer.weights()

    positions = game.sampler.next_batch()
    prompts = [game.prompts[i] for i in positions]
    rollout = collect_rollout(game.ctx, prompts, positions, game.config.rollout, game.spec, game.tokenizer,
                              RewardSum.rm_only(game.scorer))
    with torch.no_grad():
        expected = game.scorer.score([p.input_ids for p in prompts], [p.messages for p in prompts],
                                     rollout.response_lists())
    assert torch.allclose(rollout.rm_scores, expected, atol=1e-5)
    # the reward model sees the conversation in its own chat format, with the decoded reply
    text = game.scorer.texts([prompts[0].messages], [rollout.response_lists()[0]])[0]
    assert prompts[0].messages[-1]["content"] in text and text.startswith("<|im_start|>user")

    game.rm_step.warmup(2)
    game.buffer.add(rollout.prompt_index.tolist(), rollout.response_lists(), step=0)
    metrics = game.rm_step.update(game.buffer, 0)
    assert "rm/loss_apo" in metrics
    rm_after = game.scorer.weights()
    assert any(not torch.equal(rm_before[n], rm_after[n]) for n in rm_before)  # the separate RM learned
    assert all(torch.equal(a, b) for a, b in zip(adapter_before, backbone.role_parameters("reward")))
    game.rm_step.restore_base()  # refit mode returns the separate RM to its post-warm-up weights
    restored = game.scorer.weights()
    assert all(torch.equal(restored[n], game.rm_step.base_state[n]) for n in restored)


def test_separate_reward_model_weights_survive_a_checkpoint(tiny_config, single_accelerator, reward_model_dir):
    from apo_online.game import APOGame

    overrides = {"model.reward_model_path": str(reward_model_dir)}
    game = APOGame(tiny_config(**overrides), accelerator=single_accelerator())
    game.run()
    trained = game.scorer.weights()
    resumed = APOGame(tiny_config(**overrides, **{"game.resume_from_checkpoint": "latest"}),
                      accelerator=single_accelerator())
    assert any(not torch.equal(trained[n], v) for n, v in resumed.scorer.weights().items())  # fresh load differs
    resumed._resume()
    assert resumed.step == 2
    assert all(torch.equal(trained[n], v) for n, v in resumed.scorer.weights().items())
