"""Bad data input ends with a one-paragraph message naming the file and the fix (no traceback)."""

import sys
from pathlib import Path

import pytest
from conftest import run_cli

sys.path.insert(0, str(Path(__file__).parent / "data"))
from datafixtures import write_waterbirds  # noqa: E402

CONFIG = str(Path(__file__).resolve().parents[1] / "experiments" / "erm_waterbirds.yaml")


def fit_waterbirds(tmp_path, root, *extra: str) -> int:
    args = [
        "fit",
        "--config",
        CONFIG,
        "--data.init_args.root",
        str(root),
        "--data.init_args.resolution",
        "16",
        "--data.init_args.batch_size",
        "4",
    ]
    args += [
        "--model.init_args.backbone",
        "tiny",
        "--model.init_args.backbone_kwargs",
        "{}",
        "--trainer.max_epochs",
        "1",
        "--trainer.logger",
        "false",
        "--output_root",
        str(tmp_path / "runs"),
    ]
    return run_cli(args + list(extra))


def one_paragraph(err: str) -> bool:
    """A short message (a layout sketch may span a few lines) and no traceback."""
    return "Traceback" not in err and 'File "' not in err and len(err.strip().splitlines()) <= 12


def test_missing_data_root(tmp_path, capsys):
    assert fit_waterbirds(tmp_path, tmp_path / "nowhere") == 2
    err = capsys.readouterr().err
    assert "metadata.csv" in err and "Expected layout" in err and one_paragraph(err)


def test_missing_image_file_is_named(tmp_path, capsys):
    folder = write_waterbirds(tmp_path, {0: [2, 2, 2, 2], 1: [1, 1, 1, 1], 2: [1, 1, 1, 1]})
    victim = sorted(folder.rglob("*.jpg"))[0]
    victim.unlink()
    assert fit_waterbirds(tmp_path, tmp_path) == 2
    err = capsys.readouterr().err
    assert victim.name in err and one_paragraph(err)


@pytest.mark.parametrize("workers", [0, 2])
def test_corrupt_image_is_named(tmp_path, capsys, workers):
    folder = write_waterbirds(tmp_path, {0: [2, 2, 2, 2], 1: [1, 1, 1, 1], 2: [1, 1, 1, 1]})
    victim = sorted(folder.rglob("*.jpg"))[3]
    victim.write_bytes(victim.read_bytes()[:40])  # truncated JPEG
    assert fit_waterbirds(tmp_path, tmp_path, "--data.init_args.num_workers", str(workers)) == 2
    err = capsys.readouterr().err
    assert victim.name in err and one_paragraph(err)
