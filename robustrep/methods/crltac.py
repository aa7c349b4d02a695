"""CRL-TAC: contrastive representation learning with a trainable augmentation channel, and SimCLR.

Paper: "Contrastive representation learning with trainable augmentation channel" (``papers/crltac.txt``);
METHODS.md section 3.

- **Augmentations** T: every ``crop_size`` crop on a ``crop_stride`` grid of the image (default
  20 x 20 at stride 4 on 84 x 84: 289 crops), cut on the device (:mod:`robustrep.data.crops`).
- **Policy** ``P(T|x; eta)`` (:class:`~robustrep.backbones.crops.PolicyNet`); ``policy: uniform``
  fixes it to the uniform distribution: that is SimCLR.
- **Encoder** ``h = g o f``: ``f`` the backbone (default ``crltac_cnn``), ``g`` a 2-layer MLP to
  50-d; ``h`` is L2-normalised, similarity ``beta * a.b``.
- **Training** (Algorithm 1, manual optimisation, two optimisers), every iteration: (a) encoder
  step: multi-crop InfoNCE (:mod:`robustrep.losses.multicrop`) of ``m`` policy-drawn crops per
  image; (b) policy step: ``m`` uniform crops per image embedded with ``h`` fixed, weights
  ``w_ij = P(t_ij|x_i)`` renormalised over the image's crops, eta descends
  ``mean_i sum_k w_ik l_ik - lambda_H * mean_i H(P(T|x_i))`` (``l_ik``: ``policy_objective``).
  SimCLR runs step (a) only.
- **Representation**: the crops' ``h`` (or ``f``) pooled by ``embed_weighting``.

DDP: the encoder loss gathers every rank's crops with gradients, the policy step without; two
backward passes per step need ``trainer.strategy: ddp_find_unused_parameters_true``. Clip gradients
with ``grad_clip`` (the Trainer's ``gradient_clip_val`` does not apply to manual optimisation).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from robustrep.backbones.crops import PolicyNet, encode_constant_crops_once, in_eval_mode
from robustrep.data.crops import POOLINGS, crop_offsets, pooling_weights, take_crops
from robustrep.errors import ConfigError, check_choice
from robustrep.losses.multicrop import POLICY_OBJECTIVES, multicrop_info_nce, policy_objective_terms
from robustrep.methods.base import RobustMethod

POLICIES = ("learned", "uniform")
EMBED_OUTPUTS = ("head", "trunk")


# ------------------------------------------------------------------------------------ method
class CRLTAC(RobustMethod):
    """CRL-TAC (``policy: learned``) or SimCLR on the same crop set (``policy: uniform``).

    Args:
        crop_size: side of the square crops (paper: 20).
        crop_stride: stride of the crop grid (paper: 4; with 84 x 84 images that gives 289 crops).
        m: crops per image per step (paper: 8; ``m = 2`` with a uniform policy is SimCLR's NT-Xent).
        beta: the paper's inverse temperature of ``beta * a.b`` (0.5 on Grid MNIST, 1.0 on MNIST).
        temperature: the temperature ``1 / beta``, the name every other method uses; None (default)
            = ``1 / beta``. Give one of the two; the pair in effect is in ``effective_hparams``.
        policy: ``learned`` (CRL-TAC) or ``uniform`` (SimCLR: fixed uniform P, no policy step).
        lambda_h: weight of the entropy bonus ``H(P(T|x))`` in the policy step (paper: 0.0025; below
            1e-4 the policy collapses onto one crop).
        policy_lr: Adam learning rate of the policy (the encoder uses ``optimizer``).
        policy_channels, policy_hidden, policy_stride: the policy network (32, 128, stride 3).
        projection_hidden: hidden size of the projection MLP ``g`` (200 = the trunk size).
        projection_dim: output size of ``h`` (paper: 50).
        embed_output: what :meth:`embed` returns: ``head`` (``h``, the paper's main number) or ``trunk`` (``f``).
        embed_weighting: how :meth:`embed` pools the crops: ``policy``, ``top_n``, ``uniform`` or ``oracle``.
        top_n: crops of the ``top_n`` pooling (paper: 8).
        oracle_crops, oracle_grid: the oracle pooling (9 crops, 3 x 3 grid of cells).
        embed_chunk: images per chunk when embedding all crops at inference (memory bound).
        grad_clip: clip the gradient norm of each step to this value (None = off).
        gather_distributed: under DDP, contrast against the crops of every rank.
        policy_objective: the per-crop term ``l_ik`` of the policy step
            (:func:`~robustrep.losses.multicrop.policy_objective_terms`): ``anchor`` (default,
            METHODS.md's reading), ``full`` (Algorithm 1 read literally: positives and negatives
            weighted by the policy too), ``positives`` or ``sampled``. Only ``anchor`` moves the
            policy onto the digit on Grid MNIST (docs/reproductions/crltac.md).
        policy_step_eval: embed the policy step's crops with the encoder in eval mode (running
            BatchNorm statistics, left unchanged; the same fixed ``h`` as at inference) [ours].
        dedupe_constant_crops: in eval mode, encode each distinct constant crop (Grid MNIST's blank
            canvas) once and copy its output; exact, faster [ours].
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
        for name, value, choices in [
            ("policy", policy, POLICIES),
            ("embed_output", embed_output, EMBED_OUTPUTS),
            ("embed_weighting", embed_weighting, POOLINGS),
            ("policy_objective", policy_objective, POLICY_OBJECTIVES),
        ]:
            check_choice("CRLTAC", name, value, choices)
        beta = beta if temperature is None else 1.0 / temperature if temperature > 0 else -1.0
        if m < 2 or beta <= 0 or lambda_h < 0:
            raise ConfigError(f"CRLTAC: need m >= 2, a positive temperature / beta and lambda_h >= 0; got {m}, {beta}, {lambda_h}")
        self.effective_hparams.update(beta=beta, temperature=1.0 / beta)
        self.automatic_optimization = False
        self.crop_size, self.crop_stride, self.m, self.beta = crop_size, crop_stride, m, beta
        self.policy_kind, self.lambda_h, self.policy_lr = policy, lambda_h, policy_lr
        self.embed_output, self.embed_weighting, self.top_n = embed_output, embed_weighting, top_n
        self.oracle_crops, self.oracle_grid, self.embed_chunk = oracle_crops, oracle_grid, embed_chunk
        self.grad_clip, self.gather_distributed = grad_clip, gather_distributed
        self.policy_objective, self.policy_step_eval, self.dedupe_constant_crops = policy_objective, policy_step_eval, dedupe_constant_crops
        self.register_buffer("offsets", crop_offsets(self.image_shape[1:], crop_size, crop_stride), persistent=False)
        self.num_crops = int(self.offsets.shape[0])
        self.grid_shape = tuple(len(range(0, side - crop_size + 1, crop_stride)) for side in self.image_shape[1:])
        self.projection = nn.Sequential(nn.Linear(self.feature_dim, projection_hidden), nn.ReLU(inplace=True), nn.Linear(projection_hidden, projection_dim))
        self.learned_policy = policy == "learned"
        self.policy = PolicyNet(self.image_shape, self.num_crops, policy_channels, policy_hidden, policy_stride) if self.learned_policy else None

    # ------------------------------------------------------------------ pieces
    def encoder_parameters(self) -> list[nn.Parameter]:
        return [*self.backbone.parameters(), *self.projection.parameters()]

    def encode(self, crops: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(f, h)`` of a stack of crops (N x C x c x c): trunk features and normalised head output."""
        f = self.backbone(crops).flatten(1)
        return f, F.normalize(self.projection(f).float(), dim=1)

    def policy_log_probs(self, images: torch.Tensor) -> torch.Tensor:
        """``B x T`` log P(t|x) (fp32); uniform for SimCLR."""
        if self.policy is None:
            return torch.full((images.shape[0], self.num_crops), -torch.log(torch.tensor(float(self.num_crops))).item(), device=images.device)
        with torch.autocast(device_type=images.device.type, enabled=False):
            return torch.log_softmax(self.policy(images.float()).float(), dim=1)

    def sample_crops(self, images: torch.Tensor, uniform: bool = False, log_p: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``m`` crop numbers per image (B x m; drawn from the policy, or uniformly) and the crops
        (B*m x C x c x c, image-major). ``log_p``: the policy's log-probabilities if already computed."""
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
        """Multi-crop InfoNCE of ``m`` policy-sampled crops per image (gradient to ``f``, ``g`` only)."""
        _, crops = self.sample_crops(images, log_p=log_p)
        _, z = self.encode(crops)
        return multicrop_info_nce(z, self.m, self.beta, normalize=False, gather=self.gather_distributed)

    def policy_loss(self, images: torch.Tensor, log_p: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(loss, entropy)`` of the policy step (gradient to eta only): ``m`` uniformly drawn crops
        per image embedded with ``h`` fixed, ``w_ij = P(t_ij|x_i)`` renormalised over each image's
        crops; ``mean_i sum_k w_ik l_ik - lambda_h * mean_i H(P(T|x_i))``. ``log_p``: the policy's
        log-probabilities (with their graph) if already computed."""
        index, crops = self.sample_crops(images, uniform=True)
        log_p = self.policy_log_probs(images) if log_p is None else log_p
        with torch.no_grad():
            sampled = self.sample_crops(images, log_p=log_p)[1] if self.policy_objective == "sampled" else None
            _, z = self._encode_fixed(crops if sampled is None else torch.cat([crops, sampled]))
            z, views = z.chunk(2) if sampled is not None else (z, None)
        log_w = torch.log_softmax(log_p.gather(1, index), dim=1)  # P(t|x) renormalised over the sampled crops
        terms = policy_objective_terms(self.policy_objective, z, log_w, self.m, self.beta, views, gather=self.gather_distributed)
        expected = (log_w.exp() * terms.view(-1, self.m)).sum(1).mean()
        entropy = -(log_p.exp() * log_p).sum(1).mean()
        return expected - self.lambda_h * entropy, entropy

    def _encoder_modules(self) -> list[nn.Module]:
        return [self.backbone, self.projection]

    def _encode_fixed(self, crops: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``encode`` for the policy step (no gradient): with ``policy_step_eval`` the encoder runs in
        eval mode, so ``h`` is one fixed function of each crop, as at inference."""
        if not self.policy_step_eval:
            return self.encode(crops)
        with in_eval_mode(*self._encoder_modules()):
            return self.encode_no_grad(crops)

    @torch.no_grad()
    def encode_no_grad(self, crops: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`encode` without gradient. In eval mode (each crop is then mapped on its own) with
        ``dedupe_constant_crops``, each distinct constant crop (e.g. Grid MNIST's blank canvas, most of
        its 289 crops) is encoded once and its output copied: the same result, far fewer crops."""
        in_eval = not any(mod.training for enc in self._encoder_modules() for mod in enc.modules())
        if self.dedupe_constant_crops and in_eval:
            return encode_constant_crops_once(self.encode, crops)
        return self.encode(crops)

    def _step(self, optimizer, loss: torch.Tensor, params) -> None:
        optimizer.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        if self.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(params, self.grad_clip)
        optimizer.step()

    def training_step(self, batch: dict, batch_idx: int) -> None:
        images = batch["image"]
        optimizers = self.optimizers()
        opts = optimizers if isinstance(optimizers, list) else [optimizers]
        # one policy forward serves both steps: the encoder step does not change eta
        log_p = self.policy_log_probs(images) if self.policy is not None else None
        loss = self.check_finite(self.encoder_loss(images, log_p), "CRL-TAC encoder loss")
        self._step(opts[0], loss, self.encoder_parameters())
        logs = {"train/loss": loss.detach()}
        if self.policy is not None:
            policy_loss, entropy = self.policy_loss(images, log_p)
            self._step(opts[1], self.check_finite(policy_loss, "CRL-TAC policy loss"), list(self.policy.parameters()))
            logs.update({"train/policy_loss": policy_loss.detach(), "train/policy_entropy": entropy.detach()})
        self.log_dict(logs, prog_bar=True, batch_size=images.shape[0])

    def on_train_epoch_end(self) -> None:  # manual optimisation: step the encoder's scheduler here
        if (scheduler := self.lr_schedulers()) is not None:
            scheduler.step()

    def configure_optimizers(self):
        encoder_opt = self.optimizer_factory(self.encoder_parameters())
        optimizers = [encoder_opt]
        if self.policy is not None:
            optimizers.append(torch.optim.Adam(self.policy.parameters(), lr=self.policy_lr))
        schedulers = [] if self.scheduler_factory is None else [{"scheduler": self.scheduler_factory(encoder_opt), "interval": "epoch"}]
        return (optimizers, schedulers) if schedulers else optimizers

    # ------------------------------------------------------------------ representation
    @torch.no_grad()
    def crop_outputs(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every crop of every image: ``f`` (B x T x D), ``h`` (B x T x d), ``probs`` P(t|x) (B x T)."""
        out: dict[str, list[torch.Tensor]] = {"f": [], "h": [], "probs": []}
        all_crops = torch.arange(self.num_crops, device=images.device)
        for chunk in images.split(self.embed_chunk):
            crops = take_crops(chunk, all_crops.expand(chunk.shape[0], -1), self.crop_size, self.crop_stride)
            f, h = self.encode_no_grad(crops.reshape(-1, *crops.shape[2:]))
            out["f"].append(f.float().view(chunk.shape[0], self.num_crops, -1))
            out["h"].append(h.view(chunk.shape[0], self.num_crops, -1))
            out["probs"].append(self.policy_log_probs(chunk).exp())
        return {k: torch.cat(v) for k, v in out.items()}

    def crop_weights(self, images: torch.Tensor, probs: torch.Tensor, weighting: str) -> torch.Tensor:
        """``B x T`` pooling weights of a weighting (``policy``, ``top_n``, ``uniform``, ``oracle``)."""
        if weighting == "top_n" and self.policy is None:
            raise ConfigError("CRLTAC: top_n pooling needs a learned policy (with policy: uniform every crop ties)")
        return pooling_weights(weighting, images, probs, self.offsets, self.crop_size, self.top_n, self.oracle_grid, self.oracle_crops)

    @torch.no_grad()
    def embed_variants(self, images: torch.Tensor, variants: Sequence[tuple[str, str]]) -> dict[tuple[str, str], torch.Tensor]:
        """Several representations from one pass over all crops: ``{(output, weighting): B x D}``."""
        out = self.crop_outputs(images)
        result = {}
        for output, weighting in variants:
            w = self.crop_weights(images, out["probs"], weighting)
            values = out["h"] if output == "head" else out["f"]
            pooled = torch.einsum("bt,btd->bd", w, values)
            result[(output, weighting)] = F.normalize(pooled, dim=1) if output == "head" else pooled
        return result

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """``embed_output`` pooled by ``embed_weighting`` (default: normalised policy mean of ``h``)."""
        key = (self.embed_output, self.embed_weighting)
        return self.embed_variants(images, [key])[key]

    # ------------------------------------------------------------------ evaluation
    def evaluation_step(self, batch: dict, stage: str, dataloader_idx: int = 0) -> None:
        """Logs ``<stage>/loss`` (the encoder objective) on the primary set; probes give the accuracy."""
        images = batch["image"]
        if dataloader_idx == 0 and images.shape[0] > 1:
            loss = multicrop_info_nce(self.encode(self.sample_crops(images)[1])[1], self.m, self.beta, normalize=False)
            self.log(f"{stage}/loss", loss, add_dataloader_idx=False, sync_dist=True, batch_size=images.shape[0])

    def variant_name(self) -> str:  # "uniform" = SimCLR on the crop set
        return self.policy_kind

    def predict_step(self, batch, batch_idx, dataloader_idx: int = 0) -> dict[str, torch.Tensor]:
        return {"embedding": self.embed(batch["image"]), "index": batch["index"]}


__all__ = ["CRLTAC"]
