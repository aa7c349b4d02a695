"""What each run of a table gets from a launcher (``robustrep reproduce --launcher local|slurm``):
a small YAML file (``--resources FILE``, e.g. ``experiments/cluster/slurm.yaml``) and options of the
same names, which win over the file. Every value is checked here, before anything is submitted.

Keys (all optional; :data:`KEYS` says what each default means)::

    partition: gpu        # SLURM partition
    account: my-lab       # SLURM account
    gpus: 1               # GPUs per node of each run
    nodes: 1              # nodes per run
    cpus: 8               # CPUs per process
    mem: 32G              # memory per node
    time: "12:00:00"      # time limit of each run's task
    parallel: 8           # runs at once
    setup: [module load cuda]   # shell lines before each task (SLURM)
"""

from __future__ import annotations

import difflib
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from robustrep.errors import ConfigError

#: Every key, with what it means and what its default does.
KEYS: dict[str, str] = {
    "partition": "SLURM partition (default: the cluster's default partition)",
    "account": "SLURM account to charge (default: your default account)",
    "gpus": (
        "GPUs per node of each run (default 0: CPU only). More than one: the run trains with DDP, "
        "one process per GPU (--trainer.devices is set to it)"
    ),
    "nodes": (
        "nodes per run (default 1). More than one: multi-node DDP (--trainer.num_nodes is set to "
        "it; SLURM only)"
    ),
    "cpus": "CPUs per process (default: the cluster's default, usually 1)",
    "mem": "memory per node in SLURM's format, e.g. 32G or 4000M (default: the cluster's default)",
    "time": (
        "time limit of each run's task: MINUTES, HH:MM:SS or D-HH:MM:SS (default: 24:00:00 on "
        "SLURM, none locally). A run stopped by it is requeued and resumes from its checkpoint, "
        "at most 3 times"
    ),
    "parallel": (
        "runs at once (default: 1 with --launcher local; on SLURM as many as the cluster lets run)"
    ),
    "setup": (
        "shell lines each SLURM task runs first, e.g. ['module load cuda/12.4'] (default: none; "
        "the task runs this Python, so a virtualenv need not be activated)"
    ),
}
#: The time limit of a SLURM task when none is given (minutes).
DEFAULT_SLURM_MINUTES = 24 * 60


@dataclass
class Resources:
    """Resources of each run; see :data:`KEYS` for the meaning and default of each field."""

    partition: str | None = None
    account: str | None = None
    gpus: int = 0
    nodes: int = 1
    cpus: int | None = None
    mem: str | None = None
    time: int | None = None  # minutes
    parallel: int | None = None
    setup: list[str] = field(default_factory=list)

    def describe(self) -> str:
        """One line, e.g. ``partition gpu, 2 node(s) x 4 GPU(s) per run, time 12:00:00``."""
        parts = [f"{k} {v}" for k, v in (("partition", self.partition), ("account", self.account))]
        parts = [p for p in parts if not p.endswith(" None")]
        parts.append(f"{self.nodes} node(s) x {self.gpus} GPU(s) per run" if self.gpus else "CPU")
        if self.cpus:
            parts.append(f"{self.cpus} CPUs per process")
        if self.mem:
            parts.append(f"mem {self.mem}")
        if self.time:
            parts.append(f"time {format_minutes(self.time)}")
        if self.parallel:
            parts.append(f"{self.parallel} at once")
        return ", ".join(parts)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_time(value: Any, where: str = "time") -> int:
    """A SLURM time limit -> minutes (rounded up): ``90`` or ``"90"`` (minutes), ``"MM:SS"``,
    ``"HH:MM:SS"``, ``"D-HH"``, ``"D-HH:MM"``, ``"D-HH:MM:SS"``."""
    text = str(value).strip()
    match = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text)
    if isinstance(value, bool) or match is None:
        raise ConfigError(
            f"{where}: cannot read {value!r} as a time limit; use MINUTES, HH:MM:SS or D-HH:MM:SS "
            "(e.g. 90, 12:00:00, 2-00:00:00)"
        )
    days, first, *rest = match.groups()
    numbers = [int(first), *(int(x) for x in rest if x is not None)]
    if days is not None:  # D-H, D-H:M, D-H:M:S
        hours, minutes, seconds = (numbers + [0, 0])[:3]
        total = int(days) * 86400 + hours * 3600 + minutes * 60 + seconds
    elif len(numbers) == 1:  # M
        total = numbers[0] * 60
    elif len(numbers) == 2:  # M:S
        total = numbers[0] * 60 + numbers[1]
    else:  # H:M:S
        total = numbers[0] * 3600 + numbers[1] * 60 + numbers[2]
    if total <= 0:
        raise ConfigError(f"{where}: the time limit must be positive, got {value!r}")
    return -(-total // 60)


def format_minutes(minutes: int) -> str:
    """Minutes as SLURM's ``[D-]HH:MM:SS``."""
    days, rest = divmod(minutes, 24 * 60)
    text = f"{rest // 60:02d}:{rest % 60:02d}:00"
    return f"{days}-{text}" if days else text


def parse_mem(value: Any, where: str = "mem") -> str:
    """Memory per node in SLURM's format: a whole number with an optional unit K, M (the default),
    G or T, e.g. ``32G``."""
    match = re.fullmatch(r"(\d+)\s*([KMGTkmgt]?)[Bb]?", str(value).strip())
    if isinstance(value, bool) or match is None or int(match.group(1)) <= 0:
        raise ConfigError(
            f"{where}: cannot read {value!r} as memory; use a whole number with a unit, e.g. 32G "
            "or 4000M"
        )
    return f"{int(match.group(1))}{match.group(2).upper()}"


def _count(value: Any, key: str, where: str) -> int:
    minimum = 0 if key == "gpus" else 1
    text = str(value).strip()
    if isinstance(value, bool) or not re.fullmatch(r"[+-]?\d+", text) or int(text) < minimum:
        meaning = KEYS[key].split(" (")[0]
        raise ConfigError(f"{where} must be a whole number >= {minimum} ({meaning}), got {value!r}")
    return int(text)


def _name(value: Any, where: str) -> str:
    text = str(value).strip()
    if isinstance(value, bool) or not text or re.search(r"\s", text):
        raise ConfigError(f"{where} must be one word, got {value!r}")
    return text


def _check(key: str, value: Any, where: str) -> Any:
    """Check one value; ``where`` names its source (a file or an option) in the message."""
    if key == "time":
        return parse_time(value, where)
    if key == "mem":
        return parse_mem(value, where)
    if key in ("gpus", "nodes", "cpus", "parallel"):
        return _count(value, key, where)
    if key == "setup":
        lines = [value] if isinstance(value, str) else value
        if not isinstance(lines, list) or not all(isinstance(x, str) for x in lines):
            raise ConfigError(f"{where} must be a shell line or a list of them, got {value!r}")
        return list(lines)
    return _name(value, where)


def load_resources(path: str | Path | None, options: dict[str, Any] | None = None) -> Resources:
    """Resources from a YAML file (or none) and options (``None`` = not given), options winning.

    Raises:
        ConfigError: an unknown key, a file that is not a mapping, or a bad value (negative GPUs,
            an unreadable time limit or memory size, ...), naming the file or option.
    """
    import yaml

    values: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"--resources {path}: no such file")
        try:
            spec = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML ({err})") from err
        if not isinstance(spec, dict):
            raise ConfigError(f"{path}: expected a mapping of resources (keys: {', '.join(KEYS)})")
        for key, value in spec.items():
            if key not in KEYS:
                close = difflib.get_close_matches(str(key), list(KEYS), n=1)
                raise ConfigError(
                    f"{path}: unknown key {key!r}"
                    + (f" (did you mean {close[0]!r}?)" if close else "")
                    + f"; the keys are: {', '.join(KEYS)}"
                )
            if value is not None:
                values[key] = _check(key, value, f"{path}: {key}")
    for key, value in (options or {}).items():
        if value is not None:
            values[key] = _check(key, value, f"--{key}")
    return Resources(**values)
