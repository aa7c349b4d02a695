"""Stage II of IP-IRM's VIPriors recipe: supervised fine-tuning with knowledge distillation.

Paper: the IP-IRM VIPriors report (``papers/ipirm.txt`` section 3.2, eqs. 4-5); METHODS.md
section 5. A student (backbone + linear head, any backbone) is trained on the labels with

``L = alpha * CE_smooth(student, y)``
``+ beta * T^2 * KL(softmax(teacher / T) || softmax(student / T))``

(``kl_form: hinton``, the default; ``kl_form: report`` reads the report's eqs. 4-5 literally:
``beta * KL(softmax(student / T) || softmax(teacher / T))``, no ``T^2``)

where ``CE_smooth`` is cross-entropy with label smoothing (paper 0.1) and the teacher is a frozen
model whose ``forward`` returns logits over the same classes - typically a stage-I encoder that
was fine-tuned on the labels (for instance by this module with ``teacher: null``, i.e. plain
fine-tuning, initialised from the IP-IRM checkpoint with ``init_from``). The paper initialises
the student from the stage-I checkpoint too (``init_from``). KL and CE run in fp32 (autocast off).

The three-command recipe (``experiments/distill_vipriors.yaml`` has the details):

1. ``robustrep fit --config experiments/ipirm_vipriors.yaml`` (stage I);
2. ``robustrep fit --config experiments/distill_vipriors.yaml --model.init_args.teacher null
   --model.init_args.init_from <stage-I ckpt>`` (the fine-tuned teacher);
3. ``robustrep fit --config experiments/distill_vipriors.yaml
   --model.init_args.teacher <step-2 ckpt> --model.init_args.init_from <stage-I ckpt>``
   (the distilled student).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from robustrep.checkpoints import load_checkpoint, load_model
from robustrep.errors import ConfigError
from robustrep.losses.distillation import KL_FORMS, distillation_loss
from robustrep.methods.base import Classifier


def load_teacher(path: str, teacher_class: str | None = None) -> nn.Module:
    """A frozen model from a Lightning checkpoint written by ``robustrep fit`` (its class is read
    from the checkpoint) or, for other checkpoints, by ``teacher_class`` (a dotted class path)."""
    if not Path(path).is_file():
        raise ConfigError(f"teacher checkpoint not found: {path}")
    return load_model(path, teacher_class)


class Distill(Classifier):
    """Student fine-tuned on the labels with a frozen teacher's soft targets (see the module
    docstring).

    Args:
        teacher: a checkpoint path, a module whose ``forward`` gives logits, or None (no
            distillation term: supervised fine-tuning with label smoothing, e.g. to make a teacher).
        teacher_class: dotted class of the teacher checkpoint when it was not written by
            ``robustrep fit`` (which records the class); None = read it from the checkpoint.
        init_from: checkpoint whose ``backbone.*`` weights initialise the student's backbone (the
            stage-I IP-IRM / SimCLR encoder); None = the backbone's own initialisation.
        alpha: weight of the label-smoothed cross-entropy.
        beta: weight of the ``T^2``-scaled KL term. The report gives no values for alpha, beta, T;
            1, 1 and 4 are the usual Hinton-style choice.
        temperature: softening temperature T of both logit sets.
        label_smoothing: label smoothing of the cross-entropy (paper 0.1).
        kl_form: ``hinton`` (default): ``T^2 * KL(teacher || student)``, the standard distillation
            term; ``report``: the report's eqs. 4-5 as written, ``KL(student || teacher)`` without
            ``T^2`` (with it, the KL's gradient shrinks as ``1 / T^2``).
        *args, **kwargs: see ``RobustMethod`` (backbone, optimizer, metadata).
    """

    def __init__(
        self,
        *args,
        teacher: str | nn.Module | None = None,
        teacher_class: str | None = None,
        init_from: str | None = None,
        alpha: float = 1.0,
        beta: float = 1.0,
        temperature: float = 4.0,
        label_smoothing: float = 0.1,
        kl_form: str = "hinton",
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        if temperature <= 0:
            raise ConfigError(f"Distill: temperature must be > 0, got {temperature}")
        if not 0.0 <= label_smoothing < 1.0:
            raise ConfigError(f"Distill: label_smoothing must be in [0, 1), got {label_smoothing}")
        if kl_form not in KL_FORMS:
            raise ConfigError(
                f"Distill: kl_form must be one of {', '.join(KL_FORMS)}, got {kl_form!r}"
            )
        if isinstance(teacher, nn.Module):
            # a module is not a hyperparameter; its weights are in the state dict
            self.hparams.pop("teacher", None)
        self.alpha, self.beta, self.temperature = alpha, beta, temperature
        self.label_smoothing, self.kl_form = label_smoothing, kl_form
        self.teacher: nn.Module | None = (
            load_teacher(teacher, teacher_class) if isinstance(teacher, str) else teacher
        )
        if self.teacher is not None:
            self.teacher.requires_grad_(False)
            self.teacher.eval()
        if init_from is not None:
            self.load_backbone(init_from)

    def load_backbone(self, path: str) -> None:
        """Copy the ``backbone.*`` weights of a checkpoint into the student's backbone (strict)."""
        if not Path(path).is_file():
            raise ConfigError(f"init_from checkpoint not found: {path}")
        state = load_checkpoint(path)
        state = state.get("state_dict", state)
        weights = {
            k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")
        }
        if not weights:
            raise ConfigError(f"{path} has no backbone.* weights to initialise the student from")
        try:
            self.backbone.load_state_dict(weights)
        except RuntimeError as err:
            raise ConfigError(
                f"the backbone in {path} does not match the student's "
                f"({type(self.backbone).__name__}): {err}"
            ) from err

    def train(self, mode: bool = True):
        super().train(mode)
        if getattr(self, "teacher", None) is not None:
            self.teacher.eval()  # frozen: batch-norm statistics and dropout stay in eval mode
        return self

    def configure_optimizers(self):
        trainable = [p for name, p in self.named_parameters() if not name.startswith("teacher.")]
        optimizer = self.optimizer_factory(trainable)
        if self.scheduler_factory is None:
            return optimizer
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": self.scheduler_factory(optimizer), "interval": "epoch"},
        }

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        images, labels = batch["image"], batch["label"]
        logits = self(images)
        teacher_logits = None
        if self.teacher is not None and self.beta != 0:
            with torch.no_grad():
                teacher_logits = self.teacher(images)
            if teacher_logits.shape != logits.shape:
                raise ConfigError(
                    f"the teacher gives logits of shape {tuple(teacher_logits.shape)}, the "
                    f"student {tuple(logits.shape)}"
                )
        loss, ce, kl = distillation_loss(
            logits,
            teacher_logits,
            labels,
            self.alpha,
            self.beta,
            self.temperature,
            self.label_smoothing,
            self.kl_form,
        )
        self.check_finite(loss, "distillation loss")
        acc = (logits.argmax(1) == labels).float().mean()
        self.log_dict(
            {"train/loss": loss, "train/ce_loss": ce, "train/kd_loss": kl, "train/acc": acc},
            prog_bar=True,
            batch_size=len(labels),
        )
        return loss


__all__ = ["Distill", "distillation_loss", "load_teacher"]
