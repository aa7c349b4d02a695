"""Shared plumbing of the downstream analyses: rebuild a run's datamodule and model, embed splits,
train a fresh model programmatically.

A run is described by its YAML config (an ``experiments/*.yaml`` file or the ``config.yaml`` that
``robustrep fit`` writes into the run directory) and, for analyses of a trained encoder, a
checkpoint. Only the ``model``, ``data``, optimiser and ``trainer.max_epochs`` entries are read.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import torch
import yaml

from robustrep.checkpoints import import_class, load_model  # noqa: F401  (load_model: the analyses' entry point)
from robustrep.errors import ConfigError
from robustrep.evaluation.features import extract_features

#: Datamodule metadata the CLI links into the model.
LINKED = ("num_classes", "num_groups", "group_names", "image_shape")


def instantiate(spec: Any) -> Any:
    """Build ``{class_path, init_args}`` specs recursively (plain values pass through)."""
    if isinstance(spec, dict) and "class_path" in spec:
        cls = import_class(spec["class_path"])
        return cls(**{k: instantiate(v) for k, v in (spec.get("init_args") or {}).items()})
    return spec


def callable_spec(spec: dict | None):
    """A factory ``f(first_arg) -> object`` from an optimizer / scheduler spec (the CLI's
    callables).
    """
    if spec is None:
        return None
    cls = import_class(spec["class_path"])
    return functools.partial(cls, **(spec.get("init_args") or {}))


def parse_value(text: str) -> Any:
    """``key=value`` override values: YAML scalars (``3``, ``0.5``, ``true``, ``[1, 2]``,
    ``name``).
    """
    return yaml.safe_load(text)


def load_config(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    config = yaml.safe_load(path.read_text()) or {}
    # a config.yaml saved by `robustrep fit` may nest under the subcommand
    config = config.get("fit", config)
    if "data" not in config:
        raise ConfigError(f"{path} has no `data:` section")
    return config


def find_run_config(ckpt: str | Path) -> Path:
    """The ``config.yaml`` of the run that wrote ``ckpt`` (``<run>/checkpoints/x.ckpt``)."""
    ckpt = Path(ckpt)
    for folder in (ckpt.parent, ckpt.parent.parent):
        candidate = folder / "config.yaml"
        if candidate.is_file():
            return candidate
    raise ConfigError(
        f"no config.yaml next to {ckpt} or in its run directory; pass --config with the run's "
        "YAML (e.g. experiments/X.yaml)"
    )


def build_datamodule(config: dict, overrides: dict[str, Any] | None = None):
    spec = dict(config["data"])
    init = dict(spec.get("init_args") or {})
    init.update(overrides or {})
    dm = instantiate({"class_path": spec["class_path"], "init_args": init})
    dm.setup("fit")
    return dm


def build_model(config: dict, dm, overrides: dict[str, Any] | None = None):
    """A fresh model from the config's ``model`` section with the datamodule's metadata linked."""
    spec = dict(config["model"])
    init = dict(spec.get("init_args") or {})
    optimizer = callable_spec(init.pop("optimizer", None) or config.get("optimizer"))
    scheduler = callable_spec(init.pop("lr_scheduler", None) or config.get("lr_scheduler"))
    init.update(overrides or {})
    init = {k: instantiate(v) for k, v in init.items()}
    for key in LINKED:
        init[key] = getattr(dm, key)
    if optimizer is not None:
        init["optimizer"] = optimizer
    if scheduler is not None:
        init["lr_scheduler"] = scheduler
    return import_class(spec["class_path"])(**init)


def embed_splits(
    model, dm, sets: tuple[str, ...] = ("train", "test")
) -> dict[str, dict[str, torch.Tensor]]:
    """Frozen features + labels/groups/fine labels/indices of the training set (eval transform) and
    of the primary test set (and/or ``val``)."""
    keys = ("label", "group", "fine_label", "index")
    out = {}
    for name in sets:
        if name == "train":
            loader = dm.train_eval_dataloader(shard=False)
        else:
            ds = next(iter((dm.splits.test if name == "test" else dm.splits.val).values()))
            loader = dm.eval_loader(ds)
        out[name] = extract_features(model, loader, keys)
    return out


def quiet_trainer(max_epochs: int, seed: int, **kwargs):
    """A CPU/auto Trainer without logger, checkpoints or progress bar, for the analyses' inner
    runs.
    """
    import lightning.pytorch as pl

    pl.seed_everything(seed, workers=True, verbose=False)
    defaults = dict(
        max_epochs=max_epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
    )
    defaults.update(kwargs)
    return pl.Trainer(**defaults)
