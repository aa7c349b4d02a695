"""``robustrep data list`` and ``robustrep data check`` on fixtures."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from conftest import run_cli
from datafixtures import write_celeba, write_image_folder, write_waterbirds

from robustrep.data import BENCHMARKS


def test_data_list_names_every_benchmark(capsys):
    assert run_cli(["data", "list"]) == 0
    out = capsys.readouterr().out
    for name, (cls, _, _) in BENCHMARKS.items():
        assert f"{name}  (" in out and cls.__name__ in out
    assert "metadata.csv" in out and "list_attr_celeba" in out


def test_data_check_prints_group_table(tmp_path, capsys):
    write_waterbirds(tmp_path, {0: [3, 2, 1, 1], 1: [1, 1, 1, 1], 2: [2, 2, 1, 1]})
    assert run_cli(["data", "check", "--data", "waterbirds", "--root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line.strip()}
    assert lines["landbird/land"] == ["3", "1", "2"] and lines["total"] == ["7", "4", "6"]
    assert "DIFFERS from the published [3498, 184, 56, 1057]" in out


def test_data_check_recognises_published_counts(tmp_path, capsys):
    """A metadata.csv with the real group sizes (no images needed: check reads metadata only)."""
    counts = {0: [3498, 184, 56, 1057], 1: [467, 466, 133, 133], 2: [2255, 2255, 642, 642]}
    folder = tmp_path / "waterbirds_v1.0"
    folder.mkdir()
    rows = ["img_id,img_filename,y,split,place,place_filename"]
    for split, groups in counts.items():
        for g, n in enumerate(groups):
            rows += [
                f"{len(rows)},x/{len(rows)}.jpg,{g // 2},{split},{g % 2},/o/ocean/1.jpg"
                for _ in range(n)
            ]
    (folder / "metadata.csv").write_text("\n".join(rows) + "\n")
    assert run_cli(["data", "check", "--data", "waterbirds", "--root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.count("matches") == 3 and "DIFFERS" not in out


def test_data_check_with_arguments_and_missing_root(tmp_path, capsys):
    write_celeba(tmp_path, n=12)
    assert (
        run_cli(
            [
                "data",
                "check",
                "--data",
                "celeba",
                "--root",
                str(tmp_path),
                "--set",
                "preset=attractive_smiling",
                "resolution=32",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "Attractive/Smiling" in out and "3x32x32" in out
    assert (
        run_cli(
            [
                "data",
                "check",
                "--data",
                "colored_mnist_irm",
                "--set",
                "digits_source=sklearn",
                "train_colour_flip=[0.1,0.2]",
            ]
        )
        == 0
    )
    assert "test_iid" in capsys.readouterr().out
    assert run_cli(["data", "check", "--data", "celeba", "--root", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err
    assert "list_attr_celeba.txt not found" in err and "Traceback" not in err


def _waterbirds_files(tmp_path) -> tuple[Path, list[Path]]:
    folder = write_waterbirds(tmp_path, {0: [2, 1, 1, 1], 1: [1, 1, 1, 1], 2: [1, 1, 1, 1]})
    names = pd.read_csv(folder / "metadata.csv")["img_filename"]
    return folder, [folder / name for name in names]


def test_data_check_decode_names_corrupt_and_missing_files(tmp_path, capsys):
    _, files = _waterbirds_files(tmp_path)
    truncated, deleted = files[1], files[-1]  # one train image cut in half, one test image gone
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    deleted.unlink()
    # metadata only
    assert run_cli(["data", "check", "--data", "waterbirds", "--root", str(tmp_path)]) == 0
    capsys.readouterr()
    assert (
        run_cli(["data", "check", "--data", "waterbirds", "--root", str(tmp_path), "--decode"]) == 1
    )
    captured = capsys.readouterr()
    bad = [
        line for line in captured.out.splitlines() if ": missing" in line or ": unreadable" in line
    ]
    assert {line.split(": ")[0] for line in bad} == {str(truncated), str(deleted)} and len(bad) == 2
    assert f"{truncated}: unreadable: " in captured.out and "truncated" in captured.out.lower()
    assert f"{deleted}: missing" in captured.out
    assert captured.out.rstrip().endswith(f"2 of {len(files)} images could not be read")


def test_data_check_decode_errors_have_no_traceback(tmp_path, capsys):
    _, files = _waterbirds_files(tmp_path)
    files[0].write_bytes(b"not a jpeg")
    assert (
        run_cli(["data", "check", "--data", "waterbirds", "--root", str(tmp_path), "--decode"]) == 1
    )
    captured = capsys.readouterr()
    assert f"{files[0]}: unreadable: cannot identify image file" in captured.out
    assert (
        "Traceback" not in captured.out + captured.err
        and "Error:" not in captured.out + captured.err
    )


def test_data_check_decode_intact_copy(tmp_path, capsys):
    _, files = _waterbirds_files(tmp_path)
    assert (
        run_cli(["data", "check", "--data", "waterbirds", "--root", str(tmp_path), "--decode"]) == 0
    )
    captured = capsys.readouterr()
    assert f"all {len(files)} images decode" in captured.out
    assert "landbird/land" in captured.out and "Traceback" not in captured.err


def test_data_check_decode_opens_a_file_shared_by_two_sets_once(tmp_path, capsys):
    """VIPriors validates and tests on the same val/ folder: each file is decoded (and reported)
    once.
    """
    write_image_folder(tmp_path / "imagenet_50" / "train", ["n01", "n02"], per_class=2)
    write_image_folder(tmp_path / "imagenet_50" / "val", ["n01", "n02"], per_class=1, tag=1)
    broken = next((tmp_path / "imagenet_50" / "val" / "n02").iterdir())
    broken.write_bytes(b"\xff\xd8\xff")
    assert (
        run_cli(
            [
                "data",
                "check",
                "--data",
                "vipriors",
                "--root",
                str(tmp_path),
                "--set",
                "resolution=16",
                "--decode",
            ]
        )
        == 1
    )
    out = capsys.readouterr().out
    assert [line.startswith(f"{broken}: unreadable: ") for line in out.splitlines()].count(
        True
    ) == 1
    assert "1 of 6 images could not be read" in out


def test_data_check_decode_in_memory_benchmark(capsys):
    args = [
        "data",
        "check",
        "--data",
        "synthetic",
        "--set",
        "size=8",
        "train_size=64",
        "val_size=32",
        "test_size=32",
        "--decode",
    ]
    assert run_cli(args) == 0
    out = capsys.readouterr().out
    assert "images are held in memory" in out and "total" in out


def test_data_check_help_explains_decode(capsys):
    assert run_cli(["data", "check", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "--decode" in out and "missing or unreadable" in out and "status 1" in out
