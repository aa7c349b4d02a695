"""CRL-TAC: contrastive representation learning with a trainable augmentation channel, and SimCLR.

Paper: "Contrastive representation learning with trainable augmentation channel"
(``papers/crltac.txt``); METHODS.md section 3.

- **Augmentations** T: every ``crop_size`` crop on a ``crop_stride`` grid of the image, cut on the
  device (:mod:`robustrep.data.crops`). **Policy** ``P(T|x; eta)``
  (:class:`~robustrep.backbones.crops.PolicyNet`); ``policy: uniform`` fixes it: that is SimCLR.
- **Encoder** ``h = g o f``: ``f`` the backbone, ``g`` a 2-layer MLP; ``h`` is L2-normalised.
- **Training** (Algorithm 1, manual optimisation, two optimisers), every iteration: (a) encoder
  step: multi-crop InfoNCE (:mod:`robustrep.losses.multicrop`) of ``m`` policy-drawn crops per
  image; (b) policy step (:func:`~robustrep.losses.multicrop.policy_step_loss`): ``m`` uniform
  crops per image embedded with ``h`` fixed, eta descends ``mean_i sum_k w_ik l_ik - lambda_H *
  mean_i H(P(T|x_i))``. SimCLR runs step (a) only. The representation pools the crops' ``h``.

DDP: the encoder loss gathers every rank's crops with gradients, the policy step without; two
backward passes per step need ``trainer.strategy: ddp_find_unused_parameters_true``. Clip gradients
with ``grad_clip`` (the Trainer's ``gradient_clip_val`` does not apply to manual optimisation).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from robustrep.backbones.crops import PolicyNet, encode_without_grad, in_eval_mode
from robustrep.data.crops import POOLINGS, crop_offsets, pool_crops, pooling_weights, take_crops
from robustrep.errors import ConfigError, check_choice
from robustrep.losses.multicrop import POLICY_OBJECTIVES, multicrop_info_nce, policy_step_loss
from robustrep.methods.base import RobustMethod

POLICIES = ("learned", "uniform")
EMBED_OUTPUTS = ("head", "trunk")


class CRLTAC(RobustMethod):
    """CRL-TAC (``policy: learned``) or SimCLR on the same crop set (``policy: uniform``).

    Args:
        crop_size: side of the square crops (paper: 20).
        crop_stride: stride of the crop grid (paper: 4; 289 crops of 84 x 84 images).
        m: crops per image per step (paper: 8; ``m = 2`` with a uniform policy is SimCLR's NT-Xent).
        beta: the paper's inverse temperature of ``beta * a.b`` (0.5 on Grid MNIST, 1.0 on MNIST).
        temperature: ``1 / beta``, the name every other method uses; None (default) = use
            ``beta``. Give one of the two; the pair in effect is in ``effective_hparams``.
        policy: ``learned`` (CRL-TAC) or ``uniform`` (SimCLR: fixed uniform P, no policy step).
        lambda_h: weight of the entropy bonus ``H(P(T|x))`` in the policy step (paper: 0.0025; below
            1e-4 the policy collapses onto one crop).
        policy_lr: Adam learning rate of the policy (the encoder uses ``optimizer``).
        policy_channels, policy_hidden, policy_stride: the policy network (32, 128, stride 3).
        projection_hidden, projection_dim: hidden and output size of ``g`` (200: the trunk's; 50).
        embed_output: :meth:`embed` returns ``head`` (``h``, the paper's main number) or ``trunk``.
        embed_weighting: how :meth:`embed` pools the crops: ``policy``, ``top_n``, ``uniform``,
            ``oracle``; ``top_n``: crops of the ``top_n`` pooling (paper: 8).
        oracle_crops, oracle_grid: the oracle pooling (9 crops, 3 x 3 grid of cells).
        embed_chunk: images per chunk when embedding all crops at inference (memory bound).
        grad_clip: clip the gradient norm of each step to this value (None = off).
        gather_distributed: under DDP, contrast against the crops of every rank.
        policy_objective: the term ``l_ik`` of the policy step (:mod:`robustrep.losses.multicrop`):
            ``anchor`` (default, METHODS.md's reading), ``full`` (Algorithm 1 read literally:
            positives and negatives weighted by the policy too), ``positives`` or ``sampled``. Only
            ``anchor`` moves the policy onto the digit on Grid MNIST (docs/reproductions/crltac.md).
        policy_step_eval: embed the policy step's crops in eval mode (running BatchNorm statistics,
            unchanged: the same fixed ``h`` as at inference) [ours].
        dedupe_constant_crops: in eval mode, encode each distinct constant crop once (exact) [ours].
        *args, **kwargs: see ``RobustMethod`` (backbone = the trunk ``f``, default ``crltac_cnn``;
            optimizer = the encoder's optimiser, default Adam 1e-3; metadata).
    """

    required_keys = ("image",)
    selection_metric = None  # self-supervised: probes give the accuracy; test the last epoch

    def __init__(
        self,
        *args,
        backbone: str | nn.Module = "crltac_cnn",
        crop_size: int = 20,
        crop_stride: int = 4,
        m: int = 8,
        beta: float = 0.5,
        temperature: float | None = None,
        policy: str = "learned",
        lambda_h: float = 0.0025,
        policy_lr: float = 1e-3,
        policy_channels: int = 32,
        policy_hidden: int = 128,
        policy_stride: int = 3,
        projection_hidden: int = 200,
        projection_dim: int = 50,
        embed_output: str = "head",
        embed_weighting: str = "policy",
        top_n: int = 8,
        oracle_crops: int = 9,
        oracle_grid: int = 3,
        embed_chunk: int = 64,
        grad_clip: float | None = None,
        gather_distributed: bool = True,
        policy_objective: str = "anchor",
        policy_step_eval: bool = True,
        dedupe_constant_crops: bool = True,
        **kwargs,
    ) -> None:
        super().__init__(*args, backbone=backbone, **kwargs)
        check_choice("CRLTAC", "policy", policy, POLICIES)
        check_choice("CRLTAC", "embed_output", embed_output, EMBED_OUTPUTS)
        check_choice("CRLTAC", "embed_weighting", embed_weighting, POOLINGS)
        check_choice("CRLTAC", "policy_objective", policy_objective, POLICY_OBJECTIVES)
        beta = beta if temperature is None else 1.0 / temperature if temperature > 0 else -1.0
        if m < 2 or beta <= 0 or lambda_h < 0:
            raise ConfigError(
                "CRLTAC: need m >= 2, a positive temperature / beta and lambda_h >= 0; "
                f"got {m}, {beta}, {lambda_h}"
            )
        self.effective_hparams.update(beta=beta, temperature=1.0 / beta)
        self.automatic_optimization = False
        self.crop_size, self.crop_stride, self.m, self.beta = crop_size, crop_stride, m, beta
        self.policy_kind, self.lambda_h, self.policy_lr = policy, lambda_h, policy_lr
        self.embed_output, self.embed_weighting, self.top_n = embed_output, embed_weighting, top_n
        self.oracle_crops, self.oracle_grid = oracle_crops, oracle_grid
        self.embed_chunk, self.grad_clip = embed_chunk, grad_clip
        self.gather_distributed, self.policy_objective = gather_distributed, policy_objective
        self.policy_step_eval, self.dedupe_constant_crops = policy_step_eval, dedupe_constant_crops
        canvas = self.image_shape[1:]
        offsets = crop_offsets(canvas, crop_size, crop_stride)
        self.register_buffer("offsets", offsets, persistent=False)
        self.num_crops = int(self.offsets.shape[0])
        self.grid_shape = tuple(len(range(0, side - crop_size + 1, crop_stride)) for side in canvas)
        self.projection = nn.Sequential(
            nn.Linear(self.feature_dim, projection_hidden),
            nn.ReLU(inplace=True),
            nn.Linear(projection_hidden, projection_dim),
        )
        self.learned_policy = policy == "learned"
        sizes = (policy_channels, policy_hidden, policy_stride)
        self.policy = (
            PolicyNet(self.image_shape, self.num_crops, *sizes) if self.learned_policy else None
        )

    # ------------------------------------------------------------------ pieces
    def encoder_parameters(self) -> list[nn.Parameter]:
        return [*self.backbone.parameters(), *self.projection.parameters()]

    def encode(self, crops: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(f, h)`` of crops (N x C x c x c): trunk features and the normalised head output."""
        f = self.backbone(crops).flatten(1)
        return f, F.normalize(self.projection(f).float(), dim=1)

    def policy_log_probs(self, images: torch.Tensor) -> torch.Tensor:
        """``B x T`` log P(t|x) (fp32); uniform for SimCLR."""
        if self.policy is None:
            uniform = -torch.log(torch.tensor(float(self.num_crops))).item()
            return torch.full((images.shape[0], self.num_crops), uniform, device=images.device)
        with torch.autocast(device_type=images.device.type, enabled=False):
            return torch.log_softmax(self.policy(images.float()).float(), dim=1)

    def sample_crops(
        self, images: torch.Tensor, uniform: bool = False, log_p: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``m`` crop numbers per image (B x m; from the policy, or uniform) and the crops
        (B*m x C x c x c, image-major). ``log_p``: the policy's log-probabilities if computed."""
        bsz = images.shape[0]
        if uniform or self.policy is None:
            index = torch.randint(self.num_crops, (bsz, self.m), device=images.device)
        else:
            with torch.no_grad():
                probs = (self.policy_log_probs(images) if log_p is None else log_p.detach()).exp()
                index = torch.multinomial(probs, self.m, replacement=True)
        crops = take_crops(images, index, self.crop_size, self.crop_stride)
        return index, crops.reshape(bsz * self.m, *crops.shape[2:])

    # ------------------------------------------------------------------ the two steps
    def encoder_loss(self, images: torch.Tensor, log_p: torch.Tensor | None = None) -> torch.Tensor:
        """Multi-crop InfoNCE of ``m`` policy-drawn crops per image (gradient to ``f``, ``g``)."""
        _, crops = self.sample_crops(images, log_p=log_p)
        _, z = self.encode(crops)
        gather = self.gather_distributed
        return multicrop_info_nce(z, self.m, self.beta, normalize=False, gather=gather)

    def policy_loss(
        self, images: torch.Tensor, log_p: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(loss, entropy)`` of the policy step (gradient to eta only; :func:`policy_step_loss`).
        ``log_p``: the policy's log-probabilities (with their graph) if already computed."""
        index, crops = self.sample_crops(images, uniform=True)
        log_p = self.policy_log_probs(images) if log_p is None else log_p
        objective = self.policy_objective
        with torch.no_grad():
            sampled = self.sample_crops(images, log_p=log_p)[1] if objective == "sampled" else None
            _, z = self._encode_fixed(crops if sampled is None else torch.cat([crops, sampled]))
            z, views = z.chunk(2) if sampled is not None else (z, None)
        hyper = (self.m, self.beta, self.lambda_h)
        return policy_step_loss(objective, z, log_p, index, *hyper, views, self.gather_distributed)

    def _encoder_modules(self) -> list[nn.Module]:
        return [self.backbone, self.projection]

    def _encode_fixed(self, crops: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``encode`` for the policy step (no gradient): with ``policy_step_eval`` the encoder runs
        in eval mode, so ``h`` is one fixed function of each crop, as at inference."""
        if not self.policy_step_eval:
            return self.encode(crops)
        with in_eval_mode(*self._encoder_modules()):
            return self.encode_no_grad(crops)

    def encode_no_grad(self, crops: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`encode` without gradient, deduplicating constant crops in eval mode
        (``dedupe_constant_crops``, :func:`~robustrep.backbones.crops.encode_without_grad`)."""
        modules, dedupe = self._encoder_modules(), self.dedupe_constant_crops
        return encode_without_grad(self.encode, modules, crops, dedupe)

    def training_step(self, batch: dict, batch_idx: int) -> None:
        images = batch["image"]
        optimizers = self.optimizers()
        opts = optimizers if isinstance(optimizers, list) else [optimizers]
        # one policy forward serves both steps: the encoder step does not change eta
        log_p = self.policy_log_probs(images) if self.policy is not None else None
        loss = self.check_finite(self.encoder_loss(images, log_p), "CRL-TAC encoder loss")
        self.manual_step(opts[0], loss, self.encoder_parameters(), self.grad_clip)
        logs = {"train/loss": loss.detach()}
        if self.policy is not None:
            policy_loss, entropy = self.policy_loss(images, log_p)
            policy_loss = self.check_finite(policy_loss, "CRL-TAC policy loss")
            self.manual_step(opts[1], policy_loss, list(self.policy.parameters()), self.grad_clip)
            logs["train/policy_loss"] = policy_loss.detach()
            logs["train/policy_entropy"] = entropy.detach()
        self.log_dict(logs, prog_bar=True, batch_size=images.shape[0])

    def on_train_epoch_end(self) -> None:  # manual optimisation: step the encoder's scheduler here
        if (scheduler := self.lr_schedulers()) is not None:
            scheduler.step()

    def configure_optimizers(self):
        encoder_opt = self.optimizer_factory(self.encoder_parameters())
        optimizers = [encoder_opt]
        if self.policy is not None:
            optimizers.append(torch.optim.Adam(self.policy.parameters(), lr=self.policy_lr))
        if self.scheduler_factory is None:
            return optimizers
        return optimizers, [{"scheduler": self.scheduler_factory(encoder_opt), "interval": "epoch"}]

    # ------------------------------------------------------------------ representation
    @torch.no_grad()
    def crop_outputs(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every crop of every image: ``f`` (B x T x D), ``h`` (B x T x d), ``probs`` (B x T)."""
        out: dict[str, list[torch.Tensor]] = {"f": [], "h": [], "probs": []}
        all_crops = torch.arange(self.num_crops, device=images.device)
        for chunk in images.split(self.embed_chunk):
            index = all_crops.expand(chunk.shape[0], -1)
            crops = take_crops(chunk, index, self.crop_size, self.crop_stride)
            f, h = self.encode_no_grad(crops.reshape(-1, *crops.shape[2:]))
            out["f"].append(f.float().view(chunk.shape[0], self.num_crops, -1))
            out["h"].append(h.view(chunk.shape[0], self.num_crops, -1))
            out["probs"].append(self.policy_log_probs(chunk).exp())
        return {k: torch.cat(v) for k, v in out.items()}

    def crop_weights(
        self, images: torch.Tensor, probs: torch.Tensor, weighting: str
    ) -> torch.Tensor:
        """``B x T`` weights of a pooling (``policy``, ``top_n``, ``uniform``, ``oracle``)."""
        if weighting == "top_n" and self.policy is None:
            raise ConfigError(
                "CRLTAC: top_n pooling needs a learned policy (with "
                "policy: uniform every crop ties)"
            )
        pooling = (self.offsets, self.crop_size, self.top_n, self.oracle_grid, self.oracle_crops)
        return pooling_weights(weighting, images, probs, *pooling)

    @torch.no_grad()
    def embed_variants(
        self, images: torch.Tensor, variants: Sequence[tuple[str, str]]
    ) -> dict[tuple[str, str], torch.Tensor]:
        """Representations from one pass over all crops: ``{(output, weighting): B x D}``."""
        out = self.crop_outputs(images)
        return pool_crops(out, variants, lambda w: self.crop_weights(images, out["probs"], w))

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """``embed_output`` pooled by ``embed_weighting`` (default: normalised policy mean of h)."""
        key = (self.embed_output, self.embed_weighting)
        return self.embed_variants(images, [key])[key]

    # ------------------------------------------------------------------ evaluation
    def evaluation_step(self, batch: dict, stage: str, dataloader_idx: int = 0) -> None:
        """``<stage>/loss`` (the encoder objective) on the primary set; probes give the accuracy."""
        images = batch["image"]
        if dataloader_idx == 0 and images.shape[0] > 1:
            z = self.encode(self.sample_crops(images)[1])[1]
            loss = multicrop_info_nce(z, self.m, self.beta, normalize=False)
            self.log_eval({f"{stage}/loss": loss}, images.shape[0])

    def variant_name(self) -> str:  # "uniform" = SimCLR on the crop set
        return self.policy_kind

    def predict_step(self, batch, batch_idx, dataloader_idx: int = 0) -> dict[str, torch.Tensor]:
        return {"embedding": self.embed(batch["image"]), "index": batch["index"]}


__all__ = ["CRLTAC"]
