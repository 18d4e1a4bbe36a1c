"""What the policy is rewarded with: a weighted sum of reward terms (the game's RM, a user's function, the hidden
judge). terms holds the runtime pieces the rollout asks; config parses the `reward:` section and builds them."""
