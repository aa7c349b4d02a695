"""The W&B run the CLI writes (offline) holds the conventions of docs/wandb.md: project, group =
benchmark, job type = method, tags, the resolved config, summary = results.json metrics, the
group-accuracy table."""

import json
from pathlib import Path

import pytest
from conftest import QUICKSTART, TINY_QUICKSTART, run_cli

from robustrep.methods import CIM, CRLTAC, ERM, IPIRM, SpreadSupCon
from robustrep.records import method_variant as _method_variant
from robustrep.wandb_runs import read_offline_run


def test_offline_run_holds_group_job_type_tags_config_and_summary(tmp_path, monkeypatch):
    import wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    wandb.teardown()  # other tests set up wandb's process-wide settings in disabled mode
    args = [
        "fit",
        "--config",
        QUICKSTART,
        *TINY_QUICKSTART,
        "--trainer.max_epochs",
        "1",
        "--seed_everything",
        "3",
    ]
    assert (
        run_cli([*args, "--trainer.enable_progress_bar", "false", "--output_root", str(tmp_path)])
        == 0
    )
    (results_path,) = tmp_path.glob("quickstart/*/results.json")
    results = json.loads(results_path.read_text())
    (offline,) = (results_path.parent / "wandb").glob("offline-run-*")

    run = read_offline_run(results_path.parent)  # a run directory -> its latest offline run
    assert run == read_offline_run(offline)
    assert run["project"] == "robustrep"
    assert run["group"] == "synthetic" == results["benchmark"]
    assert run["job_type"] == "ERM" == results["method"]
    assert {"ERM", "synthetic", "seed3"} <= set(run["tags"])
    assert run["name"] == f"quickstart/{results_path.parent.name}"

    config = run["config"]
    assert config["model.class_path"] == "robustrep.methods.ERM"
    assert config["data.init_args.size"] == 8 and config["seed_everything"] == 3
    assert config["config_digest"] == results["config_digest"]
    assert (config["method"], config["benchmark"], config["variant"]) == (
        "ERM",
        "synthetic",
        "default",
    )

    summary = run["summary"]
    for key, value in results["metrics"].items():
        assert summary[key] == pytest.approx(value), key
    assert summary["group_accuracy._type"] == "table-file"
    table_file = offline / "files" / summary["group_accuracy.path"]
    table = json.loads(table_file.read_text())
    assert table["columns"] == ["set", "group", "acc"]
    by_group = {row[1]: row[2] for row in table["data"] if row[0] == "test"}
    assert by_group == pytest.approx(
        {
            k.split("/group_acc/")[1]: v
            for k, v in results["metrics"].items()
            if k.startswith("test/group_acc/")
        }
    )
    assert min(by_group.values()) == pytest.approx(summary["test/worst_group_acc"])


@pytest.mark.parametrize(
    "build, expected",
    [
        (lambda: ERM(backbone="tiny", image_shape=(3, 8, 8)), ""),
        (lambda: SpreadSupCon(backbone="tiny", image_shape=(3, 8, 8), loss="supcon"), "supcon"),
        (
            lambda: CRLTAC(
                image_shape=(3, 16, 16), crop_size=8, crop_stride=4, m=2, policy="uniform"
            ),
            "uniform",
        ),
        (lambda: IPIRM(backbone="tiny", image_shape=(3, 8, 8), base="simclr"), "simclr+invariance"),
        (
            lambda: IPIRM(backbone="tiny", image_shape=(3, 8, 8), base="simsiam", invariance=False),
            "simsiam",
        ),
        (
            lambda: CIM(
                backbone="tiny",
                image_shape=(3, 8, 8),
                transform_network=False,
                lam=0,
                vib_beta=0.001,
            ),
            "mask+no_tn+vib",
        ),
        (lambda: CIM(backbone="tiny", image_shape=(3, 8, 8), variant="gram"), "gram"),
    ],
)
def test_method_variant_tag(build, expected):
    assert _method_variant(build()) == expected


def test_wait_for_run_file_waits_for_the_exit_record(tmp_path, monkeypatch):
    """wandb.finish() can return while the run file is still its 7-byte header; the CLI waits for
    the end.
    """
    import wandb

    from robustrep.wandb_runs import read_wandb_records, wait_for_run_file

    monkeypatch.setenv("WANDB_MODE", "offline")
    wandb.teardown()
    run = wandb.init(project="robustrep", dir=str(tmp_path), config={"a": 1})
    run.log({"x": 1.0})
    run_file = Path(run.settings.sync_file)
    wandb.finish()
    assert wait_for_run_file(run_file, timeout=60)
    assert [r.WhichOneof("record_type") for r in read_wandb_records(run_file)][-1] == "exit"

    header_only = tmp_path / "header.wandb"
    header_only.write_bytes(run_file.read_bytes()[:7])
    cut = tmp_path / "cut.wandb"  # everything but the exit record's last bytes
    cut.write_bytes(run_file.read_bytes()[:-3])
    (tmp_path / "empty.wandb").touch()
    for path in (header_only, cut, tmp_path / "empty.wandb", tmp_path / "missing.wandb"):
        assert not wait_for_run_file(path, timeout=0.1), path.name
