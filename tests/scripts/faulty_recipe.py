"""recipes/apo_ppo.py with a fault injected after a chosen step, for the fault tests (not a test module).

    APO_FAULT=kill9 APO_FAULT_STEP=3 accelerate launch tests/scripts/faulty_recipe.py --game.total_steps 5 ...

APO_FAULT:
  kill9             the main process kills itself with SIGKILL right after logging step APO_FAULT_STEP (no cleanup,
                    no checkpoint of that step: like a machine failure)
  sigterm_launcher  the main process sends SIGTERM to its parent (the `accelerate launch` process, which forwards it
                    to every process of the run, as a cluster scheduler's preemption would)
  sigterm           the main process sends SIGTERM to itself
"""

import os
import signal
import sys
from pathlib import Path

from apo_online.cli import main
from apo_online.game import APOGame

REPO = Path(__file__).resolve().parents[2]


class FaultyGame(APOGame):
    def play_step(self):
        metrics = super().play_step()
        if self.step == int(os.environ["APO_FAULT_STEP"]) and self.accelerator.is_main_process:
            fault = os.environ["APO_FAULT"]
            if fault == "kill9":
                os.kill(os.getpid(), signal.SIGKILL)
            elif fault == "sigterm_launcher":
                os.kill(os.getppid(), signal.SIGTERM)
            elif fault == "sigterm":
                os.kill(os.getpid(), signal.SIGTERM)
            else:
                raise ValueError(f"unknown APO_FAULT {fault!r}")
        return metrics


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], default_yaml=REPO / "apo_online" / "recipes" / "apo_ppo.yaml", game_cls=FaultyGame))
