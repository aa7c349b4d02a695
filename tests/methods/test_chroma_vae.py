"""Chroma-VAE: latent split, stage 2 (kNN vs scikit-learn, checkpoints), diagnostics, baselines,
configs.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch
from conftest import quick_trainer, run_cli, tiny_synthetic
from sklearn.neighbors import KNeighborsClassifier

from robustrep.backbones.vae import ConvDecoder, ConvEncoder
from robustrep.callbacks.chroma_diagnostics import ChromaDiagnostics
from robustrep.evaluation import Stage2
from robustrep.evaluation import euclidean_knn_votes as knn_predict
from robustrep.methods import ChromaVAE, NaiveIndependent, NaiveVAEClass

EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"


def make(dm, cls=ChromaVAE, **kw) -> ChromaVAE:
    kw = {
        "dim_z": 8,
        "z_p": 0.25,
        "stage2_steps": 20,
        "backbone_kwargs": {"width": 8, "hidden": 32},
        **kw,
    }
    return cls(
        num_classes=dm.num_classes,
        num_groups=dm.num_groups,
        group_names=dm.group_names,
        image_shape=dm.image_shape,
        **kw,
    )


def batch_of(dm, n=16):
    dm.setup()
    items = [dm.train_dataset()[i] for i in range(n)]
    return {
        k: torch.stack([torch.as_tensor(it[k]) for it in items])
        for k in ("image", "label", "group")
    }


@pytest.mark.parametrize("shape", [(2, 28, 28), (3, 64, 64), (1, 56, 28), (3, 8, 8)])
def test_encoder_decoder_shapes(shape):
    enc, dec = ConvEncoder(shape, width=4, hidden=16), ConvDecoder(shape, 6, width=4, hidden=16)
    assert enc(torch.rand(2, *shape)).shape == (2, 16)
    assert dec(torch.randn(2, 6)).shape == (2, *shape)


def test_classifier_gradient_reaches_z1_only():
    dm = tiny_synthetic()
    model = make(dm, dim_z=8, z_p=0.25)
    out = model.losses(batch_of(dm))
    out["ce"].backward()
    grad = model.mu_head.weight.grad
    assert model.dim_z1 == 2
    assert grad[:2].abs().sum() > 0
    assert torch.count_nonzero(grad[2:]) == 0
    assert (
        model.logvar_head.weight.grad is None
        or torch.count_nonzero(model.logvar_head.weight.grad) == 0
    )
    assert all(
        p.grad is None or torch.count_nonzero(p.grad) == 0 for p in model.decoder.parameters()
    )


def test_classifier_warmup_uses_the_warmup_lambda_first():
    dm = tiny_synthetic()
    model = make(
        dm, classifier_weight=1.0, classifier_warmup_steps=5, classifier_warmup_weight=100.0
    )
    batch = batch_of(dm)
    torch.manual_seed(0)
    warm = model.losses(batch)  # global_step 0 < 5: lambda = 100
    torch.manual_seed(0)
    model.classifier_warmup_steps = 0
    plain = model.losses(batch)
    torch.testing.assert_close(warm["loss"] - plain["loss"], 99.0 * plain["ce"])


def test_partial_reconstructions_replace_the_other_half_with_noise():
    dm = tiny_synthetic()
    model = make(dm, dim_z=8, z_p=0.25).eval()
    images = batch_of(dm, 64)["image"]
    mu, _ = model.encode(images)
    seen = []
    model.decode = lambda z: seen.append(z) or z  # capture the latent the decoder gets
    model.partial_reconstruction(images, keep=1, generator=torch.Generator().manual_seed(0))
    model.partial_reconstruction(images, keep=2, generator=torch.Generator().manual_seed(0))
    z1_kept, z2_kept = seen
    torch.testing.assert_close(z1_kept[:, :2], mu[:, :2])
    torch.testing.assert_close(z2_kept[:, 2:], mu[:, 2:])
    for noise in (z1_kept[:, 2:], z2_kept[:, :2]):  # standard normal, not the posterior mean
        assert abs(noise.mean()) < 0.3 and 0.7 < noise.std() < 1.3
    assert not torch.allclose(z1_kept[:, 2:], mu[:, 2:])


def test_knn_matches_sklearn_brute_force():
    gen = torch.Generator().manual_seed(0)
    bank, labels = torch.randn(300, 5, generator=gen), torch.randint(3, (300,), generator=gen)
    queries = torch.randn(70, 5, generator=gen)
    k = round(math.sqrt(300))
    ref = KNeighborsClassifier(n_neighbors=k, algorithm="brute").fit(bank.numpy(), labels.numpy())
    expected = torch.as_tensor(ref.predict_proba(queries.numpy()), dtype=torch.float32)
    for max_elements in (2**25, 300 * 16, 64):  # one block; query chunks; query and bank chunks
        torch.testing.assert_close(
            knn_predict(bank, labels, queries, k, 3, max_elements=max_elements), expected
        )
    ours = knn_predict(bank, labels, queries, k, 3)
    assert torch.equal(ours.argmax(1), torch.as_tensor(ref.predict(queries.numpy())))


def test_stage2_knn_is_sklearn_on_the_frozen_mu2(tmp_path):
    dm = tiny_synthetic()
    model = make(dm)
    trainer = quick_trainer(tmp_path, max_epochs=1)
    trainer.fit(model, datamodule=dm)
    assert model.stage2.fitted and not model.stage2_stale
    mu, labels = model.encode_training_set()
    state = model.stage2.state
    torch.testing.assert_close(state["bank"], mu[:, model.dim_z1 :])
    assert state["k"] == round(math.sqrt(len(labels)))
    test = next(iter(dm.test_dataloader()[0]))
    with torch.no_grad():
        features = model.embed(test["image"])
        ours = model(test["image"]).argmax(1)
    ref = KNeighborsClassifier(n_neighbors=state["k"], algorithm="brute").fit(
        state["bank"].numpy(), labels.numpy()
    )
    assert torch.equal(ours, torch.as_tensor(ref.predict(features.numpy())))


@pytest.mark.parametrize("stage2", ["knn", "logistic"])
def test_stage2_state_survives_a_checkpoint_round_trip(tmp_path, stage2):
    dm = tiny_synthetic()
    model = make(dm, stage2=stage2)
    trainer = quick_trainer(tmp_path, max_epochs=1)
    trainer.fit(model, datamodule=dm)
    before = trainer.test(model, datamodule=dm, verbose=False)[0]
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    loaded = ChromaVAE.load_from_checkpoint(path)
    assert loaded.stage2.fitted and not loaded.stage2_stale
    for key, value in model.stage2.state.items():
        if isinstance(value, torch.Tensor):
            torch.testing.assert_close(loaded.stage2.state[key], value)
    loaded.fit_stage2 = lambda: pytest.fail("stage 2 was refitted instead of restored")
    after = quick_trainer(tmp_path).test(loaded, datamodule=dm, verbose=False)[0]
    assert after["test/acc"] == before["test/acc"]
    assert after["test/worst_group_acc"] == before["test/worst_group_acc"]


@pytest.mark.parametrize(
    "precision,stage2",
    [("32-true", "knn"), ("bf16-mixed", "knn"), ("bf16-mixed", "mlp"), ("32-true", "x2")],
)
def test_fit_and_test_end_to_end(tmp_path, precision, stage2):
    dm = tiny_synthetic()
    trainer = quick_trainer(tmp_path, max_epochs=2, precision=precision)
    model = make(dm, stage2=stage2)
    trainer.fit(model, datamodule=dm)
    assert "val/acc" in trainer.callback_metrics and "val/z1/acc" in trainer.callback_metrics
    metrics = trainer.test(model, datamodule=dm, verbose=False)[0]
    for key in (
        "test/acc",
        "test/worst_group_acc",
        "test/z1/acc",
        "test/z1/worst_group_acc",
        "test/nll",
        "test/kl",
    ):
        assert key in metrics and math.isfinite(metrics[key]), key


def test_stage2_can_wait_until_testing(tmp_path):
    dm = tiny_synthetic()
    model = make(dm, stage2_on_validation=False)
    model.fit_stage2_calls = 0
    original = model.fit_stage2

    def counting():
        model.fit_stage2_calls += 1
        original()

    model.fit_stage2 = counting
    trainer = quick_trainer(tmp_path, max_epochs=2)
    trainer.fit(model, datamodule=dm)
    assert (
        model.fit_stage2_calls == 0
        and "val/acc" not in trainer.callback_metrics
        and "val/z1/acc" in trainer.callback_metrics
    )
    metrics = trainer.test(model, datamodule=dm, verbose=False)[0]
    assert model.fit_stage2_calls == 1 and "test/acc" in metrics


def test_naive_vae_class_predicts_with_the_classifier_on_all_of_mu(tmp_path):
    dm = tiny_synthetic()
    model = make(dm, cls=NaiveVAEClass)
    assert model.stage2 is None and model.classifier.in_features == 8
    out = model.losses(batch_of(dm))
    out["ce"].backward()
    # no split: every dimension
    assert torch.count_nonzero(model.mu_head.weight.grad[model.dim_z1 :]) > 0
    trainer = quick_trainer(tmp_path, max_epochs=1)
    trainer.fit(model, datamodule=dm)
    metrics = trainer.test(model, datamodule=dm, verbose=False)[0]
    assert "test/acc" in metrics and not any("/z1/acc" in k for k in metrics)
    with torch.no_grad():
        images = batch_of(dm)["image"]
        torch.testing.assert_close(model(images), model.classifier(model.encode(images)[0]))


def test_naive_independent_trains_an_unsupervised_vae_then_a_classifier_on_mu(tmp_path):
    dm = tiny_synthetic()
    model = make(dm, cls=NaiveIndependent)
    head_before = model.classifier.weight.detach().clone()
    encoder_before = model.mu_head.weight.detach().clone()
    trainer = quick_trainer(tmp_path, max_epochs=1)
    trainer.fit(model, datamodule=dm)
    # lambda = 0: no label signal in stage 1
    torch.testing.assert_close(model.classifier.weight, head_before)
    assert not torch.allclose(model.mu_head.weight, encoder_before)
    assert model.stage2.kind == "mlp" and model.stage2_on == "z"
    metrics = trainer.test(model, datamodule=dm, verbose=False)[0]
    assert "test/acc" in metrics and not any("/z1/" in k for k in metrics)


def test_diagnostics_callback_writes_plots_and_measures_the_shortcut(tmp_path):
    dm = tiny_synthetic()
    diag = ChromaDiagnostics(num_images=3, num_samples=2, max_examples=64)
    trainer = quick_trainer(tmp_path, max_epochs=1, callbacks=[diag])
    model = make(dm)
    trainer.fit(model, datamodule=dm)
    assert "val/chroma/attr_probe_z1" in trainer.callback_metrics
    trainer.test(model, datamodule=dm, verbose=False)
    pngs = sorted(p.name for p in (tmp_path / "images").glob("*.png"))
    assert any("partial_reconstructions" in p for p in pngs) and any(
        "counterfactual_shift" in p for p in pngs
    )
    for key in (
        "test/chroma/cf_shift_z1",
        "test/chroma/cf_shift_z2",
        "test/chroma/attr_probe_z2",
        "test/chroma/stage2_flip_rate",
    ):
        assert key in trainer.callback_metrics, key
    active = int(trainer.callback_metrics["test/chroma/active_z1"]) + int(
        trainer.callback_metrics["test/chroma/active_z2"]
    )
    assert (
        0 <= int(trainer.callback_metrics["test/chroma/active_z1"]) <= model.dim_z1
        and active <= model.dim_z
    )
    assert 0.0 <= float(trainer.callback_metrics["test/chroma/stage2_flip_rate"]) <= 1.0
    images = torch.arange(2 * 3 * 4.0).view(2, 3, 2, 2)
    flipped = diag.flip(images)
    assert (
        torch.equal(flipped[:, 0], images[:, 1])
        and torch.equal(flipped[:, 1], images[:, 0])
        and torch.equal(flipped[:, 2], images[:, 2])
    )


def test_attribute_probe_reads_a_present_attribute_and_not_an_absent_one():
    gen = torch.Generator().manual_seed(0)
    attrs = torch.randint(2, (400,), generator=gen)
    content = torch.randn(400, 3, generator=gen)
    with_attr = torch.cat([content, attrs[:, None].float()], 1)
    with_attr_cf = torch.cat([content, 1 - attrs[:, None].float()], 1)
    assert ChromaDiagnostics.probe_accuracy(with_attr, with_attr_cf, attrs) > 0.95
    assert abs(ChromaDiagnostics.probe_accuracy(content, content, attrs) - 0.5) < 0.05


def test_active_units_are_the_dimensions_whose_mean_varies_over_the_data():
    gen = torch.Generator().manual_seed(0)
    scales = torch.tensor([1.0, 0.5, 0.05, 0.0, 0.2])  # variances 1, 0.25, 0.0025, 0, 0.04
    mu = torch.randn(5000, 5, generator=gen) * scales + 3.0  # the offset must not matter
    assert ChromaDiagnostics.active_units(mu).tolist() == [True, True, False, False, True]
    assert ChromaDiagnostics.active_units(mu, threshold=0.1).tolist() == [
        True,
        True,
        False,
        False,
        False,
    ]


def test_stage2_flip_rate_counts_changed_kNN_predictions():
    class Fake:
        dim_z1, stage2_stale = 1, False

        def __init__(self):
            self.stage2 = Stage2("knn", 2, k=1)
            self.stage2.fit(torch.tensor([[0.0], [10.0]]), torch.tensor([0, 1]))

        def stage2_features(self, mu):
            return mu[:, 1:]

    mu = torch.tensor([[5.0, 0.0], [5.0, 10.0], [0.0, 0.0], [0.0, 10.0]])
    # z1 moves for the first two, z2 for the last two
    mu_cf = torch.tensor([[-5.0, 0.0], [-5.0, 10.0], [0.0, 10.0], [0.0, 0.0]])
    assert ChromaDiagnostics.stage2_flip_rate(Fake(), mu, mu_cf) == 0.5
    fake = Fake()
    fake.stage2_stale = True
    assert ChromaDiagnostics.stage2_flip_rate(fake, mu, mu_cf) is None


CHROMA_CONFIGS = [
    "chroma_colored_mnist.yaml",
    "naive_vae_class_colored_mnist.yaml",
    "naive_independent_colored_mnist.yaml",
    "jtt_colored_mnist_irm.yaml",
    "chroma_dominoes.yaml",
    "jtt_dominoes.yaml",
    "chroma_celeba.yaml",
    "chroma_celeba_attractive.yaml",
    "chroma_celeba_patch.yaml",
    "jtt_celeba_cc.yaml",
    "jtt_celeba_attractive_cc.yaml",
    "chroma_chest_xray.yaml",
    "jtt_chest_xray.yaml",
]


@pytest.fixture(scope="module")
def benchmark_root(tmp_path_factory) -> Path:
    """Tiny copies of MNIST, FashionMNIST, CelebA and the two X-ray hospitals in their real
    layouts.
    """
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))
    from datafixtures import balanced_labels, write_celeba, write_chest_xray, write_mnist_raw

    root = tmp_path_factory.mktemp("chroma_benchmarks")
    write_mnist_raw(root, "MNIST", balanced_labels(60), balanced_labels(20))
    write_mnist_raw(root, "FashionMNIST", balanced_labels(60), balanced_labels(20), seed=1)
    write_celeba(root, n=36)
    write_chest_xray(
        root, [int(i % 4 == 0) for i in range(40)], ["1.0" if i % 4 else "0.0" for i in range(40)]
    )
    return root


def run_config(config: str, root: Path, tmp_path: Path) -> dict:
    args = [
        "fit",
        "--config",
        str(EXPERIMENTS / config),
        "--output_root",
        str(tmp_path),
        "--trainer.fast_dev_run",
        "1",
        "--trainer.logger",
        "false",
    ]
    args += [
        "--data.init_args.root",
        str(root),
        "--data.init_args.batch_size",
        "8",
        "--data.init_args.num_workers",
        "0",
    ]
    # the configured encoders are slow for a test
    args += ["--model.init_args.backbone", "tiny", "--model.init_args.backbone_kwargs", "{}"]
    if "celeba" in config or "chest" in config:
        args += ["--data.init_args.resolution", "16"]
    assert run_cli(args) == 0
    (results,) = list(tmp_path.rglob("results.json"))
    return json.loads(results.read_text())["metrics"]


@pytest.mark.slow
def test_colored_mnist_config_runs_both_stages_on_the_embedded_digits(tmp_path):
    args = [
        "fit",
        "--config",
        str(EXPERIMENTS / "chroma_colored_mnist.yaml"),
        "--output_root",
        str(tmp_path),
        "--trainer.fast_dev_run",
        "1",
    ]
    args += [
        "--trainer.logger",
        "false",
        "--data.init_args.digits_source",
        "sklearn",
        "--data.init_args.batch_size",
        "16",
    ]
    assert run_cli(args) == 0
    (results,) = list(tmp_path.rglob("results.json"))
    metrics = json.loads(results.read_text())["metrics"]
    for key in (
        "test/acc",
        "test/z1/acc",
        "test/test_iid/acc",
        "test/chroma/cf_shift_z2",
        "test/chroma/attr_probe_z2",
    ):
        assert math.isfinite(metrics[key]), key


@pytest.mark.slow
@pytest.mark.parametrize("config", CHROMA_CONFIGS)
def test_experiment_config_runs_on_fixture(config, benchmark_root, tmp_path):
    metrics = run_config(config, benchmark_root, tmp_path)
    assert math.isfinite(metrics["test/acc"])


@pytest.mark.slow
def test_ddp_spawn_two_processes_fit_and_test(tmp_path):
    dm = tiny_synthetic()
    model = make(dm, backbone_kwargs={"width": 4, "hidden": 16})
    trainer = quick_trainer(tmp_path, max_epochs=1, devices=2, strategy="ddp_spawn")
    trainer.fit(model, datamodule=dm)
    metrics = trainer.test(model, datamodule=dm, verbose=False)[0]
    assert 0.0 <= metrics["test/acc"] <= 1.0 and "test/z1/worst_group_acc" in metrics
