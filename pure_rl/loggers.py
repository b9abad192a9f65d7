"""Metric loggers by name (``log.loggers: [csv, tensorboard, wandb, mlflow]``), each one of TorchRL's own.

A logger factory is registered under kind ``logger``: ``factory(cfg, run_dir) -> torchrl.record.loggers.Logger``.
``csv`` is what the run's summary, plot and resume read, so every run keeps it. A logger whose package is
missing is an error naming the ``pip install`` when the config is validated (the ``package`` each declares),
never a silent skip.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

from pure_rl.registry import get, opt, register

__all__ = ["RunLoggers", "make_loggers"]


@register("logger", "csv")
def csv_logger(cfg, run_dir: Path):
    """``<run>/logs/scalars/<metric>.csv``: what summaries, plots, sweeps and resume read."""
    from torchrl.record.loggers import CSVLogger

    return CSVLogger(exp_name="logs", log_dir=str(run_dir))


@register("logger", "tensorboard", package="tensorboard")
def tensorboard_logger(cfg, run_dir: Path):
    """TensorBoard event files in ``<run>/tensorboard``."""
    from torchrl.record.loggers import TensorboardLogger

    return TensorboardLogger(exp_name="tensorboard", log_dir=str(run_dir))


@dataclass
class WandbOptions:
    wandb_project: str = opt("pure-rl", "wandb: project name")
    wandb_mode: str = opt(
        "offline",
        "wandb: 'online' syncs to the server, 'offline' writes <run>/wandb only",
        choices=("online", "offline"),
    )


@register("logger", "wandb", options=WandbOptions, package="wandb")
def wandb_logger(cfg, run_dir: Path):
    """Weights & Biases through TorchRL's ``WandbLogger`` (offline by default: sync later with ``wandb sync``)."""
    from torchrl.record.loggers import WandbLogger

    return WandbLogger(
        exp_name=cfg.log.name,
        offline=cfg.log.wandb_mode == "offline",
        save_dir=str(run_dir),
        project=cfg.log.wandb_project,
        log_env_packages=False,
    )


@dataclass
class MLflowOptions:
    mlflow_tracking_uri: str | None = opt(
        None, "mlflow: tracking server or store URI; None: a local file store, <run>/mlruns"
    )


@register("logger", "mlflow", options=MLflowOptions, package="mlflow")
def mlflow_logger(cfg, run_dir: Path):
    """MLflow through TorchRL's ``MLFlowLogger``."""
    from torchrl.record.loggers import MLFlowLogger

    uri = cfg.log.mlflow_tracking_uri
    if uri is None:
        # A run folder of its own needs no server. MLflow 3 refuses its file store unless allowed (it wants a
        # database, which mlflow-skinny cannot open); the store still reads and writes runs.
        uri = (Path(run_dir).resolve() / "mlruns").as_uri()
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    return MLFlowLogger(exp_name=cfg.log.name, tracking_uri=uri)


class RunLoggers:
    """The run's loggers as one: every scalar goes to each (non-finite values are skipped: CSV readers and
    plots expect numbers)."""

    def __init__(self, loggers: dict):
        self.loggers = loggers

    def log_scalar(self, name: str, value: float, step: int) -> None:
        if value is None or not math.isfinite(value):
            return
        for logger in self.loggers.values():
            logger.log_scalar(name, float(value), step=step)

    def close(self) -> None:
        for logger in self.loggers.values():
            finish = getattr(getattr(logger, "experiment", None), "finish", None)
            if callable(finish):  # wandb runs must be finished to flush their files
                finish()


def make_loggers(cfg, run_dir: Path) -> RunLoggers:
    """The loggers ``cfg.log.loggers`` names (``csv`` always among them), checked before any is built."""
    names = list(dict.fromkeys(["csv", *cfg.log.loggers]))
    for name in names:
        get("logger", name)  # an unknown name fails here, listing the registered ones
    return RunLoggers({name: get("logger", name)(cfg, run_dir) for name in names})
