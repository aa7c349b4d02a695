"""Every shipped experiment YAML parses and instantiates (model, datamodule, trainer, callbacks).

Datamodules read their files in ``setup()``, not ``__init__``, so instantiation needs no data; the
benchmark tests load each datamodule from on-disk fixtures, and the method tests fit on tiny data.
"""

from pathlib import Path

import pytest

from robustrep.cli import _build_cli_class

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "experiments").rglob("*.yaml"))
# tables (experiments/tables) and launcher resources (experiments/cluster) are not run configs
CONFIGS = [c for c in CONFIGS if c.parent.name not in ("tables", "cluster")]


def test_there_are_configs():
    assert any(c.name == "quickstart.yaml" for c in CONFIGS)


@pytest.fixture(scope="module")
def parser(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    cli = _build_cli_class()(
        args=["--config", str(CONFIGS[0]), "--trainer.logger", "false", "--output_root", str(out)],
        run=False,
    )
    return cli.parser


@pytest.mark.parametrize("config", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_config_instantiates(config, parser):
    cfg = parser.parse_args(["--config", str(config), "--trainer.logger", "false"])
    init = parser.instantiate_classes(cfg)
    model, data = init.model, init.data
    assert model.num_classes == data.num_classes
    assert tuple(model.image_shape) == tuple(data.image_shape)
    assert callable(getattr(model, "embed", None))
