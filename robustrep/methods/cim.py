"""CIM — Contrastive Input Morphing (Taghanaki et al., ICML 2021), its variants and baselines.

A Transformation Network (TN), a small convolutional autoencoder, turns an image ``x`` into a
one-channel mask ``m = sigmoid(TN(x))`` in (0, 1); the classifier (backbone + linear head) is
trained with cross-entropy on the morphed image ``psi(x) = m * x``, and the CE gradient reaches the
TN through ``psi``. A triplet loss with weight ``lam`` pulls ``psi(x)`` toward a same-class training
image ``x+`` and away from an other-class one ``x-`` in MS-SSIM (``L_con = MS(psi(x), x-) -
MS(psi(x), x+)``; METHODS.md section 1 explains the sign). Total loss
``CE + lam * L_con (+ vib_beta * KL)``.

One module covers every row of the paper's tables:

================  ===========================================================================
configuration     arguments
================  ===========================================================================
CIM               ``variant: mask`` (default), ``lam > 0``
CIMg              ``variant: gram`` — normalised channel Gram matrices instead of MS-SSIM
CIMf              ``variant: feature`` — the TN morphs ``x+`` and ``x-`` too
X + VIB           any of the above with ``vib_beta > 0``
VIB               ``transform_network: false, lam: 0, vib_beta > 0``
only m            ``lam: 0`` (TN trained by CE alone)
SCL-E2E           ``transform_network: false, variant: scl, lam > 0`` — CE + triplet on backbone
                  features ``||E(x)-E(x+)||^2 - ||E(x)-E(x-)||^2``
ERM               ``transform_network: false, lam: 0, vib_beta: 0`` (identical to
                  :class:`~robustrep.methods.ERM` on the same seed)
================  ===========================================================================

Triplets come from the *training set*, not the batch (:class:`~robustrep.data.triplets.
TripletSource`: one positive and one negative per anchor, distinct within the batch, only the drawn
images read), with a generator seeded from ``triplet_seed``, the epoch, the batch and the process
rank: under DDP each rank draws for its own anchors, and a resumed run draws the same triplets.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from robustrep.backbones.morph import TransformationNetwork
from robustrep.data.triplets import TripletSource
from robustrep.distributed import rank as process_rank
from robustrep.errors import ConfigError
from robustrep.losses.triplet import feature_triplet, gram_triplet, msssim_triplet, split_like
from robustrep.losses.vae import gaussian_kl, reparameterize
from robustrep.methods.base import RobustMethod
from robustrep.randomness import derive_seed

VARIANTS = ("mask", "gram", "feature", "scl")
TRIPLET_TERMS = ("both", "positive", "negative")


class CIM(RobustMethod):
    """Contrastive Input Morphing and its baselines (table in the module docstring).

    Args:
        variant: ``mask`` (CIM: MS-SSIM triplet of ``psi(x)`` against raw ``x+``/``x-``), ``gram``
            (CIMg: Gram-matrix triplet), ``feature`` (CIMf: MS-SSIM triplet against the morphed
            ``psi(x+)``/``psi(x-)``) or ``scl`` (SCL-E2E: feature triplet on backbone features).
        lam: ``lambda``, the weight of the triplet loss; 0 turns it off (and skips the sampling).
        margin: hinge margin of the triplet loss; None (default) = the plain difference.
        triplet_terms: ``both`` (default, the triplet), ``positive`` ("only x+": pull toward ``x+``
            only) or ``negative`` ("only x-": push away from ``x-`` only) — the paper's Table 5
            ablation. The unused example is neither drawn nor read.
        printed_sign: False (default) = the loss the text describes (pull ``psi(x)`` toward ``x+``);
            True = Eq. 8 as printed, ``MS(psi(x), x+) - MS(psi(x), x-)`` minimised (pushes toward
            ``x-``; METHODS.md section 1; with a ``margin``, ``relu(MS+ - MS- + margin)``), for the
            ablation that checks which sign a result needs. MS-SSIM variants only (``mask``,
            ``feature``).
        transform_network: use the TN (False for the ERM, VIB and SCL-E2E baselines).
        tn_width, tn_depth, tn_skip, mask_bias_init: the TN's shape, see
            :class:`TransformationNetwork` (None = chosen from the image size).
        vib_beta: weight of the VIB KL term; > 0 adds one linear layer after the backbone to
            ``(mu, log var)`` of ``vib_dim`` dimensions, the head classifies a reparameterised
            sample in training and ``mu`` at evaluation (the paper's VIB setting "(c)").
        vib_dim: the VIB bottleneck size.
        feature_normalize: SCL-E2E only: L2-normalise features before the squared distances
            (default; without a margin the raw loss is unbounded below) [ours].
        msssim_win_size, msssim_levels: override the MS-SSIM window / number of scales (None =
            chosen from the image size, see :mod:`robustrep.losses.msssim`).
        positives: ``class`` (default, the paper) or ``other_attribute`` (same class, another
            spurious attribute: a diagnostic that needs group labels; see :class:`TripletSource`).
        triplet_seed: seed of the triplet draw (combined with epoch, batch and rank).
        triplet_workers: threads decoding the drawn ``x+``/``x-`` of file-based benchmarks (JPEG
            datasets); in-memory benchmarks ignore it.
        *args, **kwargs: see :class:`~robustrep.methods.base.RobustMethod` (backbone, optimizer,
            ...).
    """

    required_keys = ("image", "label", "index")

    def __init__(
        self,
        *args,
        variant: Literal["mask", "gram", "feature", "scl"] = "mask",
        lam: float = 1.0,
        margin: float | None = None,
        triplet_terms: Literal["both", "positive", "negative"] = "both",
        printed_sign: bool = False,
        transform_network: bool = True,
        tn_width: int | None = None,
        tn_depth: int | None = None,
        tn_skip: bool = True,
        mask_bias_init: float = 0.0,
        vib_beta: float = 0.0,
        vib_dim: int = 256,
        feature_normalize: bool = True,
        msssim_win_size: int | None = None,
        msssim_levels: int | None = None,
        positives: Literal["class", "other_attribute"] = "class",
        triplet_seed: int = 0,
        triplet_workers: int = 0,
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        if variant not in VARIANTS:
            raise ConfigError(f"CIM variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
        if lam < 0 or vib_beta < 0:
            raise ConfigError(f"lam and vib_beta must be >= 0, got lam={lam}, vib_beta={vib_beta}")
        if lam > 0 and variant != "scl" and not transform_network:
            raise ConfigError(
                f"variant {variant!r} trains the Transformation Network; with transform_network: "
                "false use lam: 0 or variant: scl"
            )
        if triplet_terms not in TRIPLET_TERMS:
            raise ConfigError(
                f"triplet_terms must be one of {', '.join(TRIPLET_TERMS)}, got {triplet_terms!r}"
            )
        if margin is not None and triplet_terms != "both":
            raise ConfigError(
                "a triplet margin needs both terms: use triplet_terms: both or margin: null"
            )
        if printed_sign and variant not in ("mask", "feature"):
            raise ConfigError(
                "printed_sign reads Eq. 8's MS-SSIM triplet as printed; variant "
                f"{variant!r} uses a distance loss that already pulls toward x+: use "
                "printed_sign: false"
            )
        self.variant, self.lam, self.triplet_terms = variant, lam, triplet_terms
        self.printed_sign, self.margin, self.vib_beta = printed_sign, margin, vib_beta
        self.feature_normalize = feature_normalize
        self.msssim_win_size, self.msssim_levels = msssim_win_size, msssim_levels
        self.triplet_seed, self.triplet_workers = triplet_seed, triplet_workers
        self.positives = positives
        # Creation order backbone -> head as in ERM: lam=0 without TN/VIB reproduces ERM exactly.
        self.vib = nn.Linear(self.feature_dim, 2 * vib_dim) if vib_beta > 0 else None
        self.head = nn.Linear(
            vib_dim if self.vib is not None else self.feature_dim, self.num_classes
        )
        channels, height, width = self.image_shape
        tn_args = dict(width=tn_width, depth=tn_depth, skip=tn_skip, mask_bias_init=mask_bias_init)
        size = min(height, width)
        self.tn = TransformationNetwork(channels, size, **tn_args) if transform_network else None
        if self.tn is not None:
            self.effective_hparams.update(tn_width=self.tn.width, tn_depth=self.tn.depth)
        self.triplets: TripletSource | None = None

    # ------------------------------------------------------------------ model
    def mask(self, images: torch.Tensor) -> torch.Tensor:
        """The TN's mask N x 1 x H x W in (0, 1) (all ones without a TN)."""
        if self.tn is None:
            return torch.ones_like(images[:, :1])
        return self.tn(images)

    def morph(self, images: torch.Tensor) -> torch.Tensor:
        """``psi(x) = m * x`` (the images themselves without a TN)."""
        return images if self.tn is None else self.tn(images) * images

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Features of the morphed images; with VIB, the bottleneck mean ``mu``."""
        features = self.backbone(self.morph(images)).flatten(1)
        return self.vib(features).chunk(2, dim=1)[0] if self.vib is not None else features

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(images))

    # ------------------------------------------------------------------ triplets
    def set_triplet_source(self, dataset: Dataset) -> None:
        """Draw triplets from ``dataset`` (done automatically from the datamodule in ``setup``)."""
        self.triplets = TripletSource(
            dataset, self.device, workers=self.triplet_workers, positives=self.positives
        )

    def setup(self, stage: str) -> None:
        super().setup(stage)
        if stage != "fit" or self.lam == 0 or self.triplets is not None:
            return
        dm = getattr(self.trainer, "datamodule", None)
        if dm is None or not hasattr(dm, "train_dataset"):
            raise ConfigError(
                "CIM draws its triplets from the training set: fit it with a robustrep "
                "datamodule, or call set_triplet_source(dataset) first"
            )
        self.set_triplet_source(dm.train_dataset())

    def variant_name(self) -> str:
        hp = self.hparams
        parts = [hp.get("variant", "mask")]
        parts += ["no_tn"] if hp.get("transform_network") is False else []
        parts += ["vib"] if hp.get("vib_beta", 0) > 0 else []
        return "+".join(parts)

    def on_train_epoch_start(self) -> None:
        if self.triplets is not None:
            self.triplets.to(self.device)

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        # the draw depends only on (seed, epoch, batch, rank): exact resume anywhere
        if self.triplets is not None:
            self.triplets.reseed(
                derive_seed(
                    self.triplet_seed, "triplets", self.current_epoch, batch_idx, process_rank()
                )
            )

    def draw_triplets(
        self, labels: torch.Tensor, keys: torch.Tensor | None
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Positive and negative images for a batch of anchors, on the module's device (None for the
        side ``triplet_terms`` leaves out; it is not read)."""
        if self.triplets is None:
            raise ConfigError(
                "no triplet source: fit with a datamodule or call set_triplet_source(dataset)"
            )
        pos, neg = self.triplets.sample(labels, keys)
        if self.triplet_terms == "positive":
            return self.triplets.images(pos, self.device), None
        if self.triplet_terms == "negative":
            return None, self.triplets.images(neg, self.device)
        both = self.triplets.images(torch.cat([pos, neg]), self.device)
        return both.chunk(2)

    # ------------------------------------------------------------------ training
    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        images, labels = batch["image"], batch["label"]
        n = images.shape[0]
        logs: dict[str, torch.Tensor] = {}
        if self.tn is not None:
            mask = self.tn(images)
            morphed = mask * images
            logs["train/mask_mean"] = mask.detach().mean()
        else:
            morphed = images
        positive = negative = None
        if self.lam > 0:
            positive, negative = self.draw_triplets(labels, batch.get("index"))
        if self.variant == "scl" and self.lam > 0:
            # SCL-E2E encodes x, x+ and x- (a batch of 3n) and contrasts backbone features.
            others = [t for t in (positive, negative) if t is not None]
            stacked = torch.cat([morphed, self.morph(torch.cat(others))])
            feats_all = self.backbone(stacked).flatten(1)
            features = feats_all[:n]
            f_pos, f_neg = split_like(feats_all[n:], positive, negative)
            contrastive = feature_triplet(
                features, f_pos, f_neg, self.margin, self.feature_normalize
            )
        else:
            features = self.backbone(morphed).flatten(1)
            contrastive = None
            if self.lam > 0:
                contrastive = self._image_triplet(morphed, positive, negative)
        if self.vib is not None:
            mu, logvar = self.vib(features).chunk(2, dim=1)
            logits = self.head(reparameterize(mu, logvar))
            kl = gaussian_kl(mu, logvar).mean()  # summed over dimensions, averaged over the batch
            logs["train/kl"] = kl
        else:
            logits = self.head(features)
        ce = self.check_finite(F.cross_entropy(logits.float(), labels), "cross-entropy")
        loss = ce
        if self.vib is not None:
            loss = loss + self.vib_beta * self.check_finite(kl, "VIB KL")
        if contrastive is not None:
            loss = loss + self.lam * self.check_finite(contrastive, "triplet loss")
            logs["train/triplet"] = contrastive
        acc = (logits.argmax(1) == labels).float().mean()
        logs.update({"train/loss": loss, "train/ce": ce, "train/acc": acc})
        self.log_train(logs, n)
        return loss

    def _image_triplet(
        self, morphed: torch.Tensor, positive: torch.Tensor | None, negative: torch.Tensor | None
    ) -> torch.Tensor:
        if self.variant == "gram":
            return gram_triplet(morphed, positive, negative, self.margin)
        if self.variant == "feature":
            others = [t for t in (positive, negative) if t is not None]
            positive, negative = split_like(self.morph(torch.cat(others)), positive, negative)
        if self.printed_sign:
            # Eq. 8 as printed, MS(psi, x+) - MS(psi, x-): the text's loss with x+ and x-
            # exchanged, so a margin hinges the printed difference too
            positive, negative = negative, positive
        scales = dict(win_size=self.msssim_win_size, levels=self.msssim_levels)
        return msssim_triplet(morphed, positive, negative, self.margin, **scales)
