"""Reward functions to add to the policy's reward, with the signature of TRL's reward functions (docs/reward_terms.md).
Copy this file, edit it, and name a function in reward.terms:

    accelerate launch recipes/apo_ppo.py --reward.terms rm,recipes/my_rewards.py:length_penalty --reward.weights 1,0.1

Each function gets every sample of a rollout at once and returns one finite number per completion:
    prompts      the prompt of each row as the policy saw it (chat template applied, special tokens left out)
    completions  each row's response text (special tokens left out)
    kwargs       prompt_ids (the row's prompt identifier: samples of one prompt share it), completion_ids (the response
                 tokens, stop token included when present), has_eos (the response ended with the stop token),
                 messages (the prompt as chat messages); accept **kwargs so that new keys do not break the function
It is logged as reward/<function name>. Cut responses already lose rollout.missing_eos_penalty: do not penalise them
again here unless that is meant.
"""


def length_penalty(prompts, completions, **kwargs):
    """-1 per 100 characters: a nudge toward short answers."""
    return [-len(text) / 100 for text in completions]


def ends_with_punctuation(prompts, completions, **kwargs):
    """1 for a finished sentence (ends with . ! or ?), else 0: a rule-based format term."""
    return [float(text.rstrip().endswith((".", "!", "?"))) for text in completions]
