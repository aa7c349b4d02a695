"""Stage-II distillation: the loss against its formula, a frozen teacher, student initialisation."""

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from conftest import quick_trainer, tiny_synthetic

from robustrep.errors import ConfigError
from robustrep.methods import ERM, IPIRM, Distill
from robustrep.methods.distill import distillation_loss


def test_loss_matches_the_formula():
    torch.manual_seed(0)
    s, t, y = torch.randn(6, 4), torch.randn(6, 4), torch.randint(0, 4, (6,))
    total, ce, kl = distillation_loss(
        s, t, y, alpha=0.7, beta=0.3, temperature=2.0, label_smoothing=0.1
    )
    smooth = torch.full((6, 4), 0.1 / 4)
    smooth[torch.arange(6), y] += 0.9
    ce_ref = -(smooth * F.log_softmax(s, 1)).sum(1).mean()
    p_t = F.softmax(t / 2, 1)
    kl_ref = (p_t * (p_t.log() - F.log_softmax(s / 2, 1))).sum(1).mean()
    assert ce.item() == pytest.approx(ce_ref.item(), rel=1e-5)
    assert kl.item() == pytest.approx(kl_ref.item(), rel=1e-5)
    assert total.item() == pytest.approx(0.7 * ce_ref.item() + 0.3 * 4.0 * kl_ref.item(), rel=1e-5)
    assert distillation_loss(s, s.clone(), y)[2].abs().item() < 1e-6  # identical logits: no KL
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert distillation_loss(s.bfloat16(), t.bfloat16(), y)[0].dtype == torch.float32


def test_the_reports_literal_kl_form_against_a_hand_computation():
    torch.manual_seed(1)
    s, t, y = torch.randn(5, 3), torch.randn(5, 3), torch.randint(0, 3, (5,))
    total, ce, kl = distillation_loss(
        s, t, y, alpha=0.5, beta=2.0, temperature=3.0, kl_form="report"
    )
    p_s, p_t = F.softmax(s / 3, 1), F.softmax(t / 3, 1)
    kl_ref = (
        sum(sum(p_s[i, j] * torch.log(p_s[i, j] / p_t[i, j]) for j in range(3)) for i in range(5))
        / 5
    )  # KL(student || teacher), no T^2
    assert kl.item() == pytest.approx(kl_ref.item(), rel=1e-5)
    assert total.item() == pytest.approx(0.5 * ce.item() + 2.0 * kl_ref.item(), rel=1e-5)
    hinton = distillation_loss(s, t, y, alpha=0.5, beta=2.0, temperature=3.0)[2]
    assert abs(hinton.item() - kl.item()) > 1e-4  # the two directions differ
    with pytest.raises(ConfigError, match="kl_form"):
        Distill(num_classes=3, image_shape=(3, 8, 8), backbone="tiny", kl_form="reverse")


def _dm():
    return tiny_synthetic()


def _kw(dm):
    return dict(
        backbone="tiny",
        image_shape=dm.image_shape,
        num_classes=dm.num_classes,
        num_groups=dm.num_groups,
    )


def test_teacher_stays_frozen_and_in_eval_mode_while_the_student_learns(tmp_path):
    dm = _dm()
    torch.manual_seed(0)
    # batch norm: running stats must not move
    teacher = ERM(**{**_kw(dm), "backbone": "cnn", "backbone_kwargs": {"width": 4}})
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student = Distill(teacher=teacher, **_kw(dm))
    start = student.head.weight.detach().clone()
    quick_trainer(tmp_path, max_epochs=2).fit(student, dm)
    assert all(torch.equal(before[k], v) for k, v in student.teacher.state_dict().items())
    assert not student.teacher.training
    assert not torch.equal(start, student.head.weight)
    assert all(not p.requires_grad for p in student.teacher.parameters())


def test_student_backbone_initialised_from_a_stage_one_checkpoint_and_teacher_from_a_checkpoint(
    tmp_path,
):
    dm = tiny_synthetic(num_views=2, augment="contrastive", train_size=32)
    stage1 = IPIRM(
        backbone="tiny",
        image_shape=dm.image_shape,
        num_classes=dm.num_classes,
        invariance=False,
        projection_hidden=8,
        projection_dim=4,
    )
    trainer = quick_trainer(
        tmp_path,
        max_epochs=1,
        enable_checkpointing=True,
        callbacks=[pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "s1")],
    )
    trainer.fit(stage1, dm)
    (ckpt,) = list((tmp_path / "s1").glob("*.ckpt"))
    student = Distill(init_from=str(ckpt), **_kw(dm))
    for k, v in stage1.backbone.state_dict().items():
        assert torch.equal(student.backbone.state_dict()[k], v)

    dm2 = _dm()
    teacher = ERM(**_kw(dm2))
    t_trainer = quick_trainer(
        tmp_path,
        max_epochs=1,
        enable_checkpointing=True,
        callbacks=[pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "t")],
    )
    t_trainer.fit(teacher, dm2)
    (t_ckpt,) = list((tmp_path / "t").glob("*.ckpt"))
    distilled = Distill(teacher=str(t_ckpt), teacher_class="robustrep.methods.ERM", **_kw(dm2))
    x = torch.rand(3, *dm2.image_shape)
    teacher.eval()
    assert torch.allclose(distilled.teacher(x), teacher(x))


def test_without_teacher_it_is_label_smoothed_fine_tuning_and_errors_are_clear(tmp_path):
    dm = _dm()
    model = Distill(**_kw(dm))
    trainer = quick_trainer(tmp_path, max_epochs=1)
    trainer.fit(model, dm)
    assert float(trainer.callback_metrics["train/kd_loss"]) == 0.0
    with pytest.raises(ConfigError, match="not found"):
        Distill(init_from=str(tmp_path / "missing.ckpt"), **_kw(dm))
    with pytest.raises(ConfigError):
        Distill(temperature=0, **_kw(dm))
