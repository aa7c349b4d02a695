"""The stage-II loss of IP-IRM's VIPriors recipe (knowledge distillation; METHODS.md section 5):
label-smoothed cross-entropy plus a KL term between the softened student and teacher outputs."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

#: ``hinton``: ``T^2 * KL(p_teacher || p_student)``, the usual form (Hinton et al. 2015; the T^2
#: keeps the gradient's scale independent of T). ``report``: the report's eqs. 4-5 read literally,
#: ``KL(p_student || p_teacher)`` without T^2.
KL_FORMS = ("hinton", "report")


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor | None,
    labels: torch.Tensor,
    alpha: float = 1.0,
    beta: float = 1.0,
    temperature: float = 4.0,
    label_smoothing: float = 0.1,
    kl_form: Literal["hinton", "report"] = "hinton",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(total, ce, kl)``: ``total = alpha * ce + beta * w * kl`` with ``p = softmax(logits / T)``,
    ``kl`` the batch mean of ``KL(p_teacher || p_student)`` and ``w = T^2`` (``hinton``, default)
    or of ``KL(p_student || p_teacher)`` and ``w = 1`` (``report``); ``kl`` is 0 without a
    teacher. fp32, autocast off."""
    if kl_form not in KL_FORMS:
        raise ValueError(f"kl_form must be one of {', '.join(KL_FORMS)}, got {kl_form!r}")
    with torch.autocast(device_type=student_logits.device.type, enabled=False):
        s = student_logits.float()
        ce = F.cross_entropy(s, labels, label_smoothing=label_smoothing)
        if teacher_logits is None:
            return alpha * ce, ce, s.new_zeros(())
        log_p_s = F.log_softmax(s / temperature, dim=1)
        log_p_t = F.log_softmax(teacher_logits.float() / temperature, dim=1)
        if kl_form == "hinton":  # kl_div(input, target) = KL(target || input)
            kl = F.kl_div(log_p_s, log_p_t, log_target=True, reduction="batchmean")
            return alpha * ce + beta * temperature**2 * kl, ce, kl
        kl = F.kl_div(log_p_t, log_p_s, log_target=True, reduction="batchmean")
        return alpha * ce + beta * kl, ce, kl


__all__ = ["KL_FORMS", "distillation_loss"]
