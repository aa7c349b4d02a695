"""``robustrep data list`` and ``robustrep data check`` on fixtures."""

from __future__ import annotations

from conftest import run_cli
from datafixtures import write_celeba, write_waterbirds

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
            rows += [f"{len(rows)},x/{len(rows)}.jpg,{g // 2},{split},{g % 2},/o/ocean/1.jpg" for _ in range(n)]
    (folder / "metadata.csv").write_text("\n".join(rows) + "\n")
    assert run_cli(["data", "check", "--data", "waterbirds", "--root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.count("matches") == 3 and "DIFFERS" not in out


def test_data_check_with_arguments_and_missing_root(tmp_path, capsys):
    write_celeba(tmp_path, n=12)
    assert run_cli(["data", "check", "--data", "celeba", "--root", str(tmp_path), "--set", "preset=attractive_smiling", "resolution=32"]) == 0
    out = capsys.readouterr().out
    assert "Attractive/Smiling" in out and "3x32x32" in out
    assert run_cli(["data", "check", "--data", "colored_mnist_irm", "--set", "digits_source=sklearn", "train_colour_flip=[0.1,0.2]"]) == 0
    assert "test_iid" in capsys.readouterr().out
    assert run_cli(["data", "check", "--data", "celeba", "--root", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err
    assert "list_attr_celeba.txt not found" in err and "Traceback" not in err
