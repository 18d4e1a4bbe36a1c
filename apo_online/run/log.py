"""Per-step metrics of a run, written so that a resumed run continues the record instead of duplicating it.

Two sinks, both written by the main process with metrics averaged over processes:
  <output_dir>/metrics.jsonl   one JSON object per step: {"step": k, "<tag>": value, ...} (step 0 = RM warm-up and
                               data counts); non-finite values are written as NaN / Infinity, which Python's json reads
  <output_dir>/tensorboard/    TensorBoard scalars (through accelerate's tracker) and the config (HPARAMS tab), one
                               run: no subfolders
On resume from step k, metrics.jsonl keeps its lines up to step k and drops the rest (steps that the crashed run
logged after its last checkpoint, and a line cut short by a kill), and TensorBoard is told to purge events from
step k+1 on (SummaryWriter's purge_step), so each step appears once in both. A fresh run replaces both records.
"""

from __future__ import annotations

import json
from pathlib import Path

from accelerate.utils import gather_object
from torch.utils.tensorboard.summary import hparams as hparams_summaries

METRICS_FILE = "metrics.jsonl"
# what the progress bar shows after each step, when the step logged it (RJS rollouts carry no reference log-probs,
# so there is no per-step KL to show: the bar leaves it out rather than printing nan)
PROGRESS_TAGS = {"score": "objective/scores", "kl": "objective/kl"}


def progress_postfix(metrics: dict[str, float]) -> dict[str, str]:
    """The progress bar's short names and values for those of PROGRESS_TAGS that the step's metrics hold."""
    return {short: f"{metrics[tag]:.3f}" for short, tag in PROGRESS_TAGS.items() if tag in metrics}


def read_metrics(path: str | Path) -> list[dict]:
    """Complete records of a metrics.jsonl (a truncated last line, as a kill -9 may leave, is ignored)."""
    records = []
    path = Path(path)
    if not path.is_file():
        return records
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int):
            records.append(record)
    return records


class MetricsLog:
    def __init__(self, accelerator, output_dir: str | Path):
        self.accelerator = accelerator
        self.path = Path(output_dir) / METRICS_FILE

    def start(self, hparams: dict, resumed_step: int | None) -> None:
        """Open both sinks. resumed_step: the checkpoint's step when resuming, None for a fresh run."""
        if self.accelerator.is_main_process:
            kept = [] if resumed_step is None else [r for r in read_metrics(self.path) if r["step"] <= resumed_step]
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")
        purge_step = 0 if resumed_step is None else resumed_step + 1
        self.accelerator.init_trackers("tensorboard", init_kwargs={"tensorboard": {"purge_step": purge_step}})
        if self.accelerator.is_main_process:
            # The config into the run's own event file (TensorBoard's HPARAMS tab). accelerate's `config=` would
            # write it into two timestamped subfolders, which TensorBoard lists as two extra, empty runs.
            # None: an Accelerator made without log_with (as in tests) has no TensorBoard writer
            writer = getattr(self.accelerator.get_tracker("tensorboard", unwrap=True), "file_writer", None)
            if writer is not None:
                for summary in hparams_summaries(hparams, metric_dict={}):
                    writer.add_summary(summary)

    def log(self, metrics: dict[str, float], step: int) -> dict[str, float]:
        """Average each metric over processes, then write it (main process). Collective."""
        if self.accelerator.num_processes > 1:
            everyone = gather_object([metrics])
            keys = sorted({k for m in everyone for k in m})
            metrics = {k: sum(m[k] for m in everyone if k in m) / sum(1 for m in everyone if k in m) for k in keys}
        if metrics:
            self.accelerator.log(metrics, step=step)
            if self.accelerator.is_main_process:
                record = {"step": step} | {k: float(v) for k, v in sorted(metrics.items())}
                self.path.parent.mkdir(parents=True, exist_ok=True)
                with self.path.open("a", encoding="utf-8") as handle:
                    handle.write(json.dumps(record) + "\n")
        return metrics

    def close(self) -> None:
        self.accelerator.end_training()  # flushes TensorBoard



def flat_hparams(sections: dict[str, dict]) -> dict:
    """Config.to_dict() as TensorBoard's hparams: section/field -> a number, string or bool (anything else as str)."""
    flat = {}
    for section, values in sections.items():
        for key, value in values.items():
            flat[f"{section}/{key}"] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return flat
