"""A run's record on disk: where it lives, its config, and ``results.json`` (DESIGN.md, contract 6).

A *training run* lives in ``<output_root>/<name>/<time>-s<seed>-<id>/`` (under SLURM:
``slurm-<job>[_<task>]-s<seed>``, so a requeued job finds its run again) and holds ``config.yaml``,
``checkpoints/``, the W&B run and, once it has finished, ``results.json``. A later ``robustrep
test`` / ``validate`` of one of its checkpoints is an *evaluation record* in
``<run>/evaluations/<time>-<subcommand>-<id>/`` with its own ``config.yaml`` and ``results.json``;
the training run's files are never rewritten.

``results.json`` holds ``record`` (``run`` / ``evaluation``), ``stage``, method, variant, benchmark,
seed, ``config_digest`` (the whole config), ``config_key`` (the config without seeds, paths and
settings that cannot change results: runs with the same key are repeats of one experiment),
``config`` (flat), ``selection``, ``divergence`` (training runs), ``metrics`` and versions.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import platform
import re
import secrets
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

#: Config keys left out of ``config_key``: seeds, output paths and settings that only change how a
#: run is shown or stored, never its numbers (the training order and augmentations do not depend on
#: the number of workers, see :mod:`robustrep.randomness`).
NOT_IN_CONFIG_KEY = (
    "seed_everything",
    "data.init_args.seed",
    "data.init_args.num_workers",
    "output_root",
    "run_dir",
    "name",
    "ckpt_path",
    "config",
    "config.*",
    "checkpoint.*",
    "trainer.default_root_dir",
    "trainer.logger",
    "trainer.logger.*",
    "trainer.enable_progress_bar",
    "trainer.enable_model_summary",
    "trainer.log_every_n_steps",
    "verbose",
    "weights_only",
)

#: Keys that may differ between an interrupted run's config.yaml and the command resuming it.
RESUME_MAY_CHANGE = (
    "ckpt_path",
    "config",
    "config.*",
    "trainer.enable_progress_bar",
    "data.init_args.num_workers",
)


def flat_config(dump: str | Mapping[str, Any]) -> dict[str, Any]:
    """A YAML config (text or mapping) as a flat ``{"model.init_args.lr": value}`` dict."""
    out: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, Mapping) and node:
            for key, value in node.items():
                walk(value, f"{prefix}.{key}" if prefix else str(key))
        elif isinstance(node, list) and node and any(isinstance(v, Mapping) for v in node):
            for i, value in enumerate(node):
                walk(value, f"{prefix}.{i}")
        else:
            out[prefix] = (
                node if isinstance(node, int | float | str | bool) or node is None else _plain(node)
            )

    walk(yaml.safe_load(dump) if isinstance(dump, str) else dump, "")
    return out


def _plain(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    return value if isinstance(value, int | float | str | bool) or value is None else str(value)


def _matches(key: str, patterns: tuple[str, ...]) -> bool:
    return any(key == p or fnmatch.fnmatchcase(key, p) for p in patterns)


def digest(flat: Mapping[str, Any], leave_out: tuple[str, ...] = ()) -> str:
    """16 hex digits of the SHA-256 of the config's items (sorted), without the ``leave_out``
    keys.
    """
    kept = {k: v for k, v in flat.items() if not _matches(k, leave_out)}
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()[:16]


def config_key(flat: Mapping[str, Any]) -> str:
    """The digest of what makes runs comparable: the config without seeds, paths and display
    settings.
    """
    return digest(flat, NOT_IN_CONFIG_KEY)


def config_differences(
    old: Mapping[str, Any], new: Mapping[str, Any], ignore: tuple[str, ...] = RESUME_MAY_CHANGE
) -> list[str]:
    """``key: old -> new`` for every key whose value differs (keys matching ``ignore`` left out)."""
    out = []
    for key in sorted(set(old) | set(new)):
        if _matches(key, ignore):
            continue
        if old.get(key, "<unset>") != new.get(key, "<unset>"):
            out.append(f"{key}: {old.get(key, '<unset>')!r} -> {new.get(key, '<unset>')!r}")
    return out


def _torchrun_id() -> str | None:
    """The run id ``torchrun`` gave this process (``--rdzv-id``; ``--standalone`` draws one), or
    None outside torchrun. ``"none"`` is torchrun's default: no id the processes agree on."""
    return os.environ.get("TORCHELASTIC_RUN_ID")


def new_run_name(seed: Any, kind: str = "") -> str:
    """``<time>[-<kind>]-s<seed>-<id>``, or inside a SLURM job ``slurm-<job>[_<task>]-s<seed>`` and
    under torchrun ``torchrun-<rdzv id>-s<seed>``: names every process of a multi-process (and
    multi-node) run derives alike, so they all write to one run directory."""
    job = os.environ.get("SLURM_ARRAY_JOB_ID") or os.environ.get("SLURM_JOB_ID")
    if job and not kind:
        task = os.environ.get("SLURM_ARRAY_TASK_ID")
        return (
            f"slurm-{job}"
            + (f"_{task}" if os.environ.get("SLURM_ARRAY_JOB_ID") and task else "")
            + f"-s{seed}"
        )
    run = _torchrun_id()
    if run not in (None, "none") and not kind:
        return f"torchrun-{re.sub(r'[^A-Za-z0-9_.-]+', '_', run)}-s{seed}"
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return f"{stamp}{'-' + kind if kind else ''}-s{seed}-{secrets.token_hex(2)}"


def run_of_checkpoint(ckpt_path: str | os.PathLike | None) -> Path | None:
    """The run directory a checkpoint belongs to (``<run>/checkpoints/x.ckpt``), else None."""
    if not ckpt_path:
        return None
    path = Path(str(ckpt_path))
    return path.parent.parent if path.parent.name == "checkpoints" else None


def newest_checkpoint(run_dir: Path) -> Path | None:
    """The most recent resumable checkpoint of a run: ``checkpoints/last.ckpt`` or a SLURM
    ``hpc_ckpt_*.ckpt``.
    """
    candidates = [run_dir / "checkpoints" / "last.ckpt", *run_dir.glob("hpc_ckpt_*.ckpt")]
    existing = [p for p in candidates if p.is_file()]
    return max(existing, key=lambda p: p.stat().st_mtime) if existing else None


def choose_run_dir(
    subcommand: str, config: Any, flat: Mapping[str, Any]
) -> tuple[Path, str, Path | None]:
    """Where a run's record goes:
    ``(run directory, record kind, checkpoint to resume from or None)``.

    ``fit``: ``--run_dir``, else the run a ``--ckpt_path`` belongs to (a resume), else a new folder.
    A finished run (it has results.json) is refused; so is a run folder holding an interrupted run's
    checkpoint when no ``--ckpt_path`` is given (except a SLURM job's or torchrun run id's own
    folder: a requeued job or a restarted torchrun resumes from its newest checkpoint), and a resume
    whose config differs from the run's config.yaml.
    ``test`` / ``validate`` / ``predict``: an evaluation record,
    ``<run>/evaluations/<time>-<sub>-<id>`` beside the run its checkpoint belongs to, or a new
    folder; never an existing record.
    """
    from robustrep.errors import ConfigError

    explicit, ckpt = config.get("run_dir"), config.get("ckpt_path")
    owner = run_of_checkpoint(ckpt)
    seed = config.get("seed_everything")
    if subcommand != "fit":
        if explicit:
            run_dir = Path(explicit)
            if (run_dir / "results.json").exists() or (run_dir / "config.yaml").exists():
                raise ConfigError(
                    f"{run_dir} already holds a record; give `robustrep {subcommand}` a new "
                    "--run_dir, or none (`--run_dir null` when --config is the run's own "
                    "config.yaml): evaluations then go beside their run"
                )
            return run_dir, "evaluation", None
        base = (
            owner / "evaluations"
            if owner is not None
            else Path(config["output_root"]) / config["name"]
        )
        return base / new_run_name(seed, kind=subcommand), "evaluation", None
    several = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if not explicit and owner is None and _torchrun_id() == "none" and several:
        raise ConfigError(
            "under torchrun, the processes of a run need a run directory they agree on: give "
            "torchrun a run id (--rdzv-id NAME; the run goes to <output_root>/<name>/"
            "torchrun-NAME-s<seed>) or give robustrep one (--run_dir DIR, on a file system "
            "every node sees)"
        )
    run_dir = (
        Path(explicit)
        if explicit
        else owner
        if owner is not None
        else Path(config["output_root"]) / config["name"] / new_run_name(seed)
    )
    if (run_dir / "results.json").exists():
        raise ConfigError(
            f"{run_dir} is a finished run (it has results.json); its record is never "
            "overwritten. To train it further, start a new run from its checkpoint: add "
            "--run_dir NEW_DIR (or drop --run_dir)."
        )
    resume_from = None
    if ckpt is None and (found := newest_checkpoint(run_dir)) is not None:
        if not run_dir.name.startswith(("slurm-", "torchrun-")):
            raise ConfigError(
                f"{run_dir} holds an interrupted run (checkpoint {found}); resume it with "
                f"--ckpt_path {found}, or choose another --run_dir"
            )
        resume_from = found
    config_file = run_dir / "config.yaml"
    if config_file.exists():
        changed = config_differences(
            flat_config(config_file.read_text()), {**flat, "run_dir": str(run_dir)}
        )
        if changed:
            raise ConfigError(
                f"resuming {run_dir} with a different config than it was started with "
                f"({'; '.join(changed[:6])}{' ...' if len(changed) > 6 else ''}). Resume with the "
                "same settings, or start a new run (--run_dir NEW_DIR)."
            )
    return run_dir, "run", resume_from


def write_json(path: Path, payload: Mapping[str, Any]) -> None:
    """Write JSON atomically (a temporary file renamed over the target)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str))
    os.replace(tmp, path)


def versions() -> dict[str, str]:
    """Python and the versions of the packages a result depends on."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("robustrep", "torch", "torchvision", "lightning", "torchmetrics", "wandb"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def default_name(config: Mapping[str, Any]) -> str:
    """The run's experiment name: the last config file's stem, else ``<method>_<datamodule>``."""
    cfgs = config.get("config") or []
    if cfgs:
        return Path(str(cfgs[-1])).stem
    model = str((config.get("model") or {}).get("class_path", "model")).rsplit(".", 1)[-1].lower()
    data = str((config.get("data") or {}).get("class_path", "data")).rsplit(".", 1)[-1].lower()
    return f"{model}_{data}"


def method_variant(model: Any) -> str:
    """The baseline/variant a method module runs as (its ``variant_name()``; "" for modules without
    one).
    """
    name = getattr(model, "variant_name", None)
    return str(name()) if callable(name) else ""


def summary_text(results: Mapping[str, Any], path: Path) -> str:
    """The short table printed at the end of a run."""
    m = results["metrics"]
    keys = [
        k
        for k in m
        if k.count("/") <= 2
        and "group_acc/" not in k
        and not k.endswith("/loss")
        and not k.startswith("last/")
    ]
    width = max([len(k) for k in keys] + [10])
    lines = [
        "",
        f"robustrep: {results['method']} on {results['benchmark']} (seed {results['seed']})",
        "-" * (width + 10),
    ]
    lines += [f"{k:<{width}}  {m[k]:.4f}" for k in keys]
    lines.append("-" * (width + 10))
    selection = results.get("selection") or {}
    if selection.get("monitor"):
        value = selection.get("value")
        best = f" = {value:.4f}" if isinstance(value, float) else ""
        lines.append(
            f"test metrics at epoch {selection.get('epoch')} (best "
            f"{selection['monitor']}{best}); last epoch's under last/"
        )
    divergence = results.get("divergence") or {}
    if divergence.get("diverged"):
        lines.append(
            f"WARNING: the training loss diverged ({divergence['first_loss']:.3g} -> "
            f"{divergence['final_loss']:.3g})"
        )
    lines += [f"results: {path}", ""]
    return "\n".join(lines)
