"""Online APO with PPO policy updates.

    accelerate launch recipes/apo_ppo.py                                   # the short offline first run (SmolLM2-135M)
    accelerate launch recipes/apo_ppo.py --config apo_online/recipes/apo_ppo_full.yaml   # the full game
    accelerate launch recipes/apo_ppo.py --config my.yaml --game.total_steps 200      # my.yaml: extends: .../apo_ppo_full.yaml
    accelerate launch recipes/apo_ppo.py --model_name_or_path HuggingFaceTB/SmolLM2-360M-Instruct --dataset_name trl-lib/ultrafeedback_binarized

Defaults come from apo_online/recipes/apo_ppo.yaml (the short first run; the full game: --config
apo_online/recipes/apo_ppo_full.yaml); any field can be overridden with --section.field value.
"""

import sys
from pathlib import Path

# run as a file: import this checkout's package (an installed copy, if any, comes second)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from apo_online.allocator import use_preferred_allocator  # noqa: E402 (standard library only)

use_preferred_allocator()  # tcmalloc/jemalloc when installed: a re-exec, before anything heavy loads

from apo_online.cli import main  # noqa: E402
from apo_online.recipes import recipe_yaml  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], default_yaml=recipe_yaml("ppo")))
