"""A training run's checkpoints: save, resume (the same run only, generators included), and
trim the results to the checkpoint resumed from."""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from . import runfiles
from .runfiles import ConfigError, CorruptFileError

if TYPE_CHECKING:
    from .train import RunArgs


def _rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(path: Path, algorithm, next_step: int, args: RunArgs, hparams: dict) -> None:
    runfiles.save_checkpoint(path, {
        "model_dict": algorithm.state_dict(), "step": next_step, "rng": _rng_state(),
        "args": dataclasses.asdict(args), "model_hparams": hparams,
        "model_input_shape": algorithm.input_shape, "model_num_classes": algorithm.num_classes,
        "model_num_domains": algorithm.num_domains})


# what makes a run this run: a checkpoint that differs in any of them is not continued
_IDENTITY = ("algorithm", "dataset", "test_envs", "hparams_seed", "trial_seed", "seed", "holdout_fraction",
             "dataset_kwargs")


def resume(path: Path, algorithm, args: RunArgs, hparams: dict) -> int:
    """Load the checkpoint into ``algorithm`` and the global generators; the step to resume at."""
    ckpt = runfiles.load_checkpoint(path, ["model_dict", "step", "rng", "args", "model_hparams"])
    saved = dict(ckpt["args"], test_envs=sorted(ckpt["args"]["test_envs"]))
    ours = dict(dataclasses.asdict(args), test_envs=sorted(args.test_envs))
    differ = [k for k in _IDENTITY if saved.get(k) != ours[k]]
    differ += [f"hparams[{k!r}]" for k in sorted(set(hparams) | set(ckpt["model_hparams"]))
               if hparams.get(k) != ckpt["model_hparams"].get(k)]
    if differ:
        raise ConfigError(f"{path} is from another run (it differs in {', '.join(differ)}); "
                          f"use another --output-dir, or delete {path.parent} to start over")
    try:
        algorithm.load_state_dict(ckpt["model_dict"])
    except RuntimeError as exc:  # missing, unexpected or misshapen tensors
        raise CorruptFileError(f"{path}: its model does not load ({' '.join(str(exc).split())}); "
                               "delete it to restart the run from step 0") from None
    _set_rng_state(ckpt["rng"])
    return int(ckpt["step"])


def keep_records(results: Path, last_step: int) -> None:
    """Drop lines written after the checkpoint we resume from (a crash between the two); the
    record of ``last_step``, written just before the checkpoint, must be there."""
    if not results.exists():
        raise CorruptFileError(f"{results} is missing but a checkpoint follows step {last_step}; "
                               "delete the checkpoint to restart the run from step 0")
    records = [r for r in runfiles.read_records(results) if r["step"] <= last_step]
    if not records or records[-1]["step"] != last_step:
        raise CorruptFileError(f"{results} has no record of step {last_step}, which the checkpoint follows; "
                               "delete the checkpoint to restart the run from step 0")
    runfiles.write_records(results, records)
