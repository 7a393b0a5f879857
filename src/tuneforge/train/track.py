"""Observability: metrics.jsonl always, TensorBoard event files by default, MLflow/W&B when
configured, and loss.png at the end."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from tuneforge.outdir import writing

log = logging.getLogger(__name__)


def _rows(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """(line, row) for each readable line of metrics.jsonl. A run killed mid-write, or a full
    disk, leaves a torn last line; it is skipped with a warning rather than breaking resume
    or the plot (the step it logged is logged again after resume)."""
    kept = []
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        if not isinstance(row, dict):
            log.warning("warning: %s:%d: unreadable metrics line skipped (a write was cut short)", path, number)
            continue
        kept.append((line, row))
    return kept


def read_metrics(path: Path) -> list[dict[str, Any]]:
    return [row for _, row in _rows(path)]


class Tracker:
    def __init__(self, out: Path, backends: list[str], config: dict[str, Any], resume_step: int | None,
                 enabled: bool = True):
        self.enabled = enabled
        self.path = out / "metrics.jsonl"
        self.writers: list[Any] = []
        if not enabled:
            return
        if resume_step is not None and self.path.exists():
            # drop what was logged after the checkpoint we resume from; it will be logged again
            kept = [line for line, row in _rows(self.path) if row.get("step", 0) <= resume_step]
            with writing(self.path):
                self.path.write_text("".join(line + "\n" for line in kept))
        elif resume_step is None:
            with writing(self.path):
                self.path.write_text("")
        if "tensorboard" in backends:
            from torch.utils.tensorboard import SummaryWriter

            self.writers.append(("tensorboard", SummaryWriter(log_dir=str(out / "tensorboard"))))
        if "mlflow" in backends:
            import mlflow

            mlflow.start_run(run_name=out.name)
            mlflow.log_params({k: str(v) for k, v in config.items()})
            self.writers.append(("mlflow", mlflow))
        if "wandb" in backends:
            import wandb

            self.writers.append(("wandb", wandb.init(project="tuneforge", name=out.name, config=config)))

    def log(self, step: int, values: dict[str, Any]) -> None:
        if not self.enabled:
            return
        row = {"step": step, **{k: (round(v, 6) if isinstance(v, float) else v) for k, v in values.items()}}
        with writing(self.path), open(self.path, "a") as handle:
            handle.write(json.dumps(row) + "\n")
        numeric = {k: v for k, v in values.items() if isinstance(v, (int, float)) and k != "epoch"}
        for kind, writer in self.writers:
            if kind == "tensorboard":
                for key, value in numeric.items():
                    writer.add_scalar(key, value, step)
            elif kind == "mlflow":
                writer.log_metrics(numeric, step=step)
            else:
                writer.log(numeric, step=step)

    def close(self) -> None:
        for kind, writer in self.writers:
            if kind == "tensorboard":
                writer.close()
            elif kind == "mlflow":
                writer.end_run()
            else:
                writer.finish()


def plot_losses(metrics_path: Path, out_png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(metrics_path)
    train = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    evals = [(r["step"], r["eval_loss"]) for r in rows if "eval_loss" in r]
    fig, ax = plt.subplots(figsize=(7, 4))
    if train:
        ax.plot(*zip(*train), label="train loss", alpha=0.8)
    if evals:
        ax.plot(*zip(*evals), "o-", label="eval loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
