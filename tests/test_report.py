"""``robustrep report`` on hand-written results.json files, and the offline W&B file reader."""

import io
import json
import math
import struct
import zlib
from pathlib import Path

import pandas as pd
import pytest
from conftest import run_cli

from robustrep.errors import ConfigError, CorruptDataError
from robustrep.report import aggregate, load_runs, select_metrics
from robustrep.report_format import format_cell, to_markdown
from robustrep.wandb_runs import read_offline_run, read_wandb_records, runs_from_wandb

# method, benchmark, seed, metrics (fractions, as the CLI writes them)
RUNS = [
    (
        "ERM",
        "synthetic",
        0,
        {"test/acc": 0.90, "test/worst_group_acc": 0.50, "test/group_acc/a": 0.5},
    ),
    (
        "ERM",
        "synthetic",
        1,
        {"test/acc": 0.80, "test/worst_group_acc": 0.60, "test/group_acc/a": 0.6},
    ),
    (
        "ERM",
        "synthetic",
        2,
        {"test/acc": 0.85, "test/worst_group_acc": 0.70, "test/group_acc/a": 0.7},
    ),
    ("CIM", "synthetic", 0, {"test/acc": 0.70, "test/worst_group_acc": 0.65}),
    ("CIM", "synthetic", 1, {"test/acc": 0.74}),  # no worst-group metric: counts for acc only
    (
        "ERM",
        "waterbirds",
        0,
        {"test/acc": 0.97, "test/worst_group_acc": 0.61, "test/weighted_acc": 0.95},
    ),
]


def write_runs(root: Path, runs=RUNS) -> Path:
    for i, (method, benchmark, seed, metrics) in enumerate(runs):
        run_dir = root / f"{method.lower()}_{benchmark}" / f"run{i}-s{seed}"
        run_dir.mkdir(parents=True)
        results = {
            "stage": "fit",
            "method": method,
            "benchmark": benchmark,
            "name": f"{method.lower()}_{benchmark}",
            "seed": seed,
            "config_digest": "0" * 16,
            "run_dir": str(run_dir),
            "metrics": metrics,
            "versions": {},
            "finished": "2026-01-01T00:00:00",
        }
        (run_dir / "results.json").write_text(json.dumps(results))
    return root


def test_aggregate_means_stds_counts_and_mixed_benchmarks(tmp_path):
    df = load_runs([write_runs(tmp_path)])
    assert len(df) == 6
    agg = aggregate(
        df, ["method", "benchmark"], ["test/acc", "test/worst_group_acc", "test/weighted_acc"]
    ).set_index(["method", "benchmark"])
    erm = agg.loc[("ERM", "synthetic")]
    assert erm["n"] == 3
    assert erm["test/acc"] == pytest.approx(0.85)
    assert erm["test/acc:std"] == pytest.approx(0.05)  # sample std of 0.90, 0.80, 0.85
    assert erm["test/worst_group_acc"] == pytest.approx(0.60)
    assert erm["test/worst_group_acc:std"] == pytest.approx(0.10)
    assert erm["test/weighted_acc:n"] == 0 and math.isnan(erm["test/weighted_acc"])
    cim = agg.loc[("CIM", "synthetic")]
    assert cim["n"] == 2 and cim["test/acc"] == pytest.approx(0.72)
    assert cim["test/worst_group_acc:n"] == 1 and cim["test/worst_group_acc"] == pytest.approx(0.65)
    assert math.isnan(cim["test/worst_group_acc:std"])  # one run: no spread
    wb = agg.loc[("ERM", "waterbirds")]
    assert wb["n"] == 1 and wb["test/weighted_acc"] == pytest.approx(0.95)


def test_format_cell():
    assert format_cell(0.6, 0.1, 3, 3) == "60.00 ± 10.00"
    assert format_cell(0.65, math.nan, 1, 2) == "65.00 (n=1)"
    assert format_cell(math.nan, math.nan, 0, 2) == "-"
    assert format_cell(0.123456, 0.0, 1, 1, scale=1.0, digits=4) == "0.1235"


def test_report_markdown_is_readable_and_writes_files(tmp_path, capsys):
    runs = write_runs(tmp_path / "runs")
    assert run_cli(["report", str(runs), "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header == [
        "method",
        "benchmark",
        "selection",
        "test/worst_group_acc",
        "test/acc",
        "test/weighted_acc",
        "n",
    ]
    assert set(lines[1]) <= set("|-: ")
    rows = {
        tuple(c.strip() for c in line.strip("|").split("|"))[:2]: [
            c.strip() for c in line.strip("|").split("|")
        ]
        for line in lines[2:]
    }
    assert rows[("ERM", "synthetic")][2:] == ["last", "60.00 ± 10.00", "85.00 ± 5.00", "-", "3"]
    assert rows[("CIM", "synthetic")][2:] == ["last", "65.00 (n=1)", "72.00 ± 2.83", "-", "2"]
    assert rows[("ERM", "waterbirds")][2:] == ["last", "61.00", "97.00", "95.00", "1"]
    assert len({len(line) for line in lines}) == 1, "columns are padded to one width"
    written = tmp_path / "out"
    assert (written / "report.md").read_text().strip() == "\n".join(lines)
    assert len(pd.read_csv(written / "report_runs.csv")) == 6
    assert (written / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_csv_and_html(tmp_path, capsys):
    runs = write_runs(tmp_path / "runs")
    assert (
        run_cli(["report", str(runs), "--format", "csv", "--by", "method", "--metrics", "test/acc"])
        == 0
    )
    table = pd.read_csv(io.StringIO(capsys.readouterr().out.strip())).set_index("method")
    assert list(table.columns) == [
        "record",
        "config",
        "selection",
        "config_key",
        "n",
        "test/acc:mean",
        "test/acc:std",
        "test/acc:n",
    ]
    # seeds pooled over both benchmarks
    assert table.loc["ERM", "n"] == 4 and table.loc["CIM", "n"] == 2
    assert table.loc["ERM", "test/acc:mean"] == pytest.approx(0.88)
    assert table.loc["ERM", "test/acc:std"] == pytest.approx(
        pd.Series([0.90, 0.80, 0.85, 0.97]).std()
    )
    assert run_cli(["report", str(runs), "--format", "html", "--out", str(tmp_path / "h")]) == 0
    html = (tmp_path / "h" / "report.html").read_text()
    assert html.count("<tr") == 4 and "60.00 ± 10.00" in html


def test_metric_globs_by_seed_and_errors(tmp_path, capsys):
    runs = write_runs(tmp_path / "runs")
    df = load_runs([runs / "erm_synthetic"])  # a folder of run directories
    assert len(df) == 3
    assert select_metrics(df, ["test/group_acc/*", "test/acc"]) == ["test/group_acc/a", "test/acc"]
    assert run_cli(["report", str(runs), "--metrics", "test/nope"]) == 2
    assert "no run has a metric matching 'test/nope'" in capsys.readouterr().err
    assert run_cli(["report", str(tmp_path / "missing")]) == 2
    assert run_cli(["report", str(runs), "--by", "optimizer"]) == 2
    assert "cannot group by" in capsys.readouterr().err
    assert (
        run_cli(["report", str(runs), "--raw", "--by", "seed", "--metrics", "test/worst_group_acc"])
        == 0
    )
    out = capsys.readouterr().out  # seed 0: 0.50, 0.65, 0.61; seed 1: CIM has no worst-group metric
    assert (
        "|    0 | last      |      0.5867 ± 0.0777 | 3 | repeated seed 0 x3 |" in out
        and "|    1 | last      |         0.6000 (n=1) | 2 | repeated seed 1 x2 |" in out
    )


def test_markdown_alignment_reference():
    table = pd.DataFrame({"method": ["ERM", "GroupDRO"], "acc": ["1.00", "22.50 ± 1.00"]})
    assert to_markdown(table).splitlines() == [
        "| method   |          acc |",
        "|:---------|-------------:|",
        "| ERM      |         1.00 |",
        "| GroupDRO | 22.50 ± 1.00 |",
    ]


def test_runs_from_wandb_api():
    class Run:
        def __init__(self, job_type, group, seed, summary):
            self.job_type, self.group, self.name, self.url = (
                job_type,
                group,
                f"{job_type}-{seed}",
                f"https://wandb.ai/x/{seed}",
            )
            self.config = {"seed_everything": seed, "config_digest": "abc"}
            self.summary = summary

    class Api:
        def runs(self, path, filters=None):
            assert path == "me/robustrep"
            return [
                Run(
                    "ERM",
                    "synthetic",
                    0,
                    {"test/acc": 0.5, "val/acc": 0.1, "group_accuracy": {"_type": "table"}},
                ),
                Run("ERM", "synthetic", 1, {"test/acc": 0.7}),
            ]

    class Offline:
        def runs(self, path, filters=None):
            raise ConnectionError("no network")

    with pytest.raises(
        ConfigError,
        match="could not read the W&B project 'me/robustrep' .ConnectionError: no network",
    ):
        runs_from_wandb("me/robustrep", api=Offline())
    df = runs_from_wandb("me/robustrep", api=Api())
    assert (
        list(df["seed"]) == [0, 1]
        and "val/acc" not in df.columns
        and "group_accuracy" not in df.columns
    )
    agg = aggregate(df, ["method", "benchmark"], ["test/acc"])
    assert agg.loc[0, "test/acc"] == pytest.approx(0.6) and agg.loc[0, "n"] == 2


# -------------------------------------------------------------------------- offline W&B file reader


def _write_log(path: Path, payloads: list[bytes]) -> None:
    """A naive writer of the LevelDB-log framing W&B uses: header, 32 KiB blocks, records split
    across blocks.
    """
    block = 32768
    out = bytearray(b":W&B" + struct.pack("<HB", 0xBEE1, 0))
    for payload in payloads:
        first = True
        while True:
            room = block - len(out) % block
            if room < 7:
                out += b"\x00" * room
                continue
            chunk, payload = payload[: room - 7], payload[room - 7 :]
            kind = (1 if first else 4) if not payload else (2 if first else 3)
            out += (
                struct.pack(
                    "<IHB", zlib.crc32(bytes([kind]) + chunk) & 0xFFFFFFFF, len(chunk), kind
                )
                + chunk
            )
            first = False
            if not payload:
                break
    path.write_bytes(bytes(out))


def test_wandb_reader_joins_records_split_across_blocks(tmp_path):
    from wandb.proto import wandb_internal_pb2 as pb

    run = pb.Record()
    run.run.run_id, run.run.run_group, run.run.job_type = "abc", "synthetic", "ERM"
    run.run.tags.extend(["ERM", "seed0"])
    big = pb.Record()
    for i in range(4000):  # ~90 KB: spans three blocks (FIRST, MIDDLE, LAST)
        item = big.summary.update.add()
        item.key, item.value_json = f"test/group_acc/g{i}", json.dumps(i / 4000)
    nested = pb.Record()
    item = nested.summary.update.add()
    item.nested_key.extend(["group_accuracy", "size"])
    item.value_json = "162"
    path = tmp_path / "run-abc.wandb"
    _write_log(path, [run.SerializeToString(), big.SerializeToString(), nested.SerializeToString()])
    assert len(big.SerializeToString()) > 2 * 32768
    kinds = [r.WhichOneof("record_type") for r in read_wandb_records(path)]
    assert kinds == ["run", "summary", "summary"]
    info = read_offline_run(path)
    assert (info["id"], info["group"], info["job_type"], info["tags"]) == (
        "abc",
        "synthetic",
        "ERM",
        ["ERM", "seed0"],
    )
    assert len(info["summary"]) == 4001 and info["summary"][
        "test/group_acc/g3999"
    ] == pytest.approx(3999 / 4000)
    assert info["summary"]["group_accuracy.size"] == 162

    data = bytearray(path.read_bytes())
    data[40] ^= 0xFF  # corrupt a payload byte of the first record
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptDataError, match="checksum"):
        list(read_wandb_records(path))
    path.write_bytes(b"not a wandb file")
    with pytest.raises(CorruptDataError, match="header"):
        list(read_wandb_records(path))


def test_comparison_subcommands_are_listed_and_dispatched(capsys):
    assert run_cli(["--help"]) == 0
    out = capsys.readouterr().out
    for sub in ("report", "reproduce", "analyze"):
        assert f"  {sub} " in out
    for sub in ("report", "reproduce", "analyze"):
        assert run_cli([sub, "--help"]) == 0
        assert f"usage: robustrep {sub}" in capsys.readouterr().out
