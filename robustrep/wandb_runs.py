"""Runs in W&B: the API reader behind ``robustrep report --wandb`` and a reader of offline runs.

The offline reader parses the ``run-*.wandb`` files of offline W&B runs (wandb >= 0.19 no longer
ships a Python reader): the file is a 7-byte header (``:W&B``, magic ``0xBEE1``, version 0) followed
by 32 KiB blocks of LevelDB-log records (CRC-32 of type + payload, 2-byte length, 1-byte type
FULL/FIRST/MIDDLE/LAST), each payload a ``wandb_internal_pb2.Record`` protobuf.
"""

from __future__ import annotations

import json
import struct
import time
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd

from robustrep.errors import ConfigError


def runs_from_wandb(project: str, api: Any = None, filters: dict | None = None) -> pd.DataFrame:
    """The same frame as :func:`load_runs`, from the W&B API (``project`` = ``ENTITY/PROJECT`` or
    ``PROJECT``).

    Method = the run's job type, benchmark = its group, seed = the ``seed_everything`` config value,
    metrics = the summary keys of the ``test/``, ``probe/``, ``c2f/`` and ``knn/`` families.
    """
    try:
        if api is None:
            import wandb

            api = wandb.Api()
        runs = list(api.runs(project, filters=filters or {}))
    except Exception as err:
        # no login, no network, unknown project: one readable line instead of a traceback
        raise ConfigError(
            f"could not read the W&B project {project!r} ({type(err).__name__}: {err}); run "
            "`wandb login` and check the name, or give run directories"
        ) from err
    rows = []
    for run in runs:
        summary = dict(run.summary)
        row: dict[str, Any] = {
            "method": run.job_type,
            "benchmark": run.group,
            "name": run.name,
            "seed": run.config.get("seed_everything"),
            "stage": "fit",
            "config_digest": run.config.get("config_digest"),
            "run_dir": getattr(run, "url", run.name),
        }
        for key, value in summary.items():
            if key.startswith(("test/", "probe/", "c2f/", "knn/")) and isinstance(
                value, int | float
            ):
                row[key] = float(value)
        rows.append(row)
    if not rows:
        raise ConfigError(f"W&B project {project} has no runs")
    return pd.DataFrame(rows)


_WANDB_MAGIC = 0xBEE1
_BLOCK = 32768
_RECORD_HEADER = 7  # crc32 (4), length (2), type (1)
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def read_wandb_records(path: str | Path) -> Iterator[Any]:
    """Yield the ``wandb_internal_pb2.Record`` messages of an offline ``run-*.wandb`` file, in
    order.

    Raises:
        CorruptDataError: bad header, checksum mismatch or a broken FIRST/MIDDLE/LAST sequence.
    """
    from wandb.proto import wandb_internal_pb2

    from robustrep.errors import CorruptDataError

    data = Path(path).read_bytes()
    if len(data) < 7 or data[:4] != b":W&B" or struct.unpack("<H", data[4:6])[0] != _WANDB_MAGIC:
        raise CorruptDataError(f"{path} is not a W&B run file (bad header)")
    pos, pending = 7, None
    while pos + _RECORD_HEADER <= len(data):
        room = _BLOCK - pos % _BLOCK
        if room < _RECORD_HEADER:  # block trailer: zero padding
            pos += room
            continue
        crc, length, kind = struct.unpack("<IHB", data[pos : pos + _RECORD_HEADER])
        payload = data[pos + _RECORD_HEADER : pos + _RECORD_HEADER + length]
        pos += _RECORD_HEADER + length
        if kind == 0 and length == 0:  # zero padding written before a block boundary
            continue
        # the writer was still appending (a live run): stop at the last whole record
        if len(payload) < length:
            break
        if zlib.crc32(bytes([kind]) + payload) & 0xFFFFFFFF != crc:
            raise CorruptDataError(
                f"{path}: checksum mismatch at byte {pos - length - _RECORD_HEADER}"
            )
        if kind == _FULL:
            message = payload
        elif kind == _FIRST:
            pending = payload
            continue
        elif kind in (_MIDDLE, _LAST):
            if pending is None:
                raise CorruptDataError(f"{path}: record continuation without a start at byte {pos}")
            pending += payload
            if kind == _MIDDLE:
                continue
            message, pending = pending, None
        else:
            raise CorruptDataError(f"{path}: unknown record type {kind}")
        record = wandb_internal_pb2.Record()
        record.ParseFromString(message)
        yield record


def wait_for_run_file(path: str | Path, timeout: float = 60.0) -> bool:
    """Wait until W&B has written a run file to its end (its ``exit`` record); True if it did in
    time.

    ``wandb.finish()`` returns before W&B's service process has flushed the ``run-*.wandb`` file
    (right after it the file can still be its 7-byte header), so a reader in the same process,
    or a process that exits at once, can see a truncated run. ``timeout`` bounds the wait in
    seconds.
    """
    from robustrep.errors import CorruptDataError

    deadline = time.monotonic() + timeout
    while True:
        try:
            if any(r.WhichOneof("record_type") == "exit" for r in read_wandb_records(path)):
                return True
        except (OSError, CorruptDataError):  # not created yet, or only part of its header written
            pass
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


def read_offline_run(path: str | Path) -> dict[str, Any]:
    """The run header, config and final summary of an offline run.

    Args:
        path: a ``run-*.wandb`` file, an ``offline-run-*`` folder, or a robustrep run directory
            (its latest ``wandb/offline-run-*``).

    Returns:
        ``{"id", "project", "group", "job_type", "name", "tags",
        "config": {...}, "summary": {...}}``; config and summary values JSON-decoded, nested
        summary keys joined with ``.``.
    """
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("run-*.wandb")) or sorted(
            path.glob("wandb/offline-run-*/run-*.wandb")
        )
        if not files:
            raise ConfigError(f"no offline W&B run (run-*.wandb) under {path}")
        path = files[-1]
    info: dict[str, Any] = {"config": {}, "summary": {}}
    for record in read_wandb_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run = record.run
            info.update(
                id=run.run_id,
                project=run.project,
                group=run.run_group,
                job_type=run.job_type,
                name=run.display_name,
                tags=list(run.tags),
            )
            _apply_config(info["config"], run.config.update)
        elif kind == "config":
            _apply_config(info["config"], record.config.update)
        elif kind == "summary":
            for item in record.summary.update:
                key = item.key or ".".join(item.nested_key)
                info["summary"][key] = json.loads(item.value_json)
            for item in record.summary.remove:
                info["summary"].pop(item.key or ".".join(item.nested_key), None)
    return info


def _apply_config(config: dict[str, Any], items: Iterable[Any]) -> None:
    for item in items:
        key = item.key or ".".join(item.nested_key)
        config[key] = json.loads(item.value_json)
