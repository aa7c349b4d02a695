"""The VAE baselines of Chroma-VAE's Table 2 (METHODS.md §2), as configurations of
:class:`ChromaVAE`.

- :class:`NaiveVAEClass` (Naive-VAE-Class): a standard VAE classifier - the classifier sees all of
  ``mu`` and is the prediction (no latent split, no stage 2).
- :class:`NaiveIndependent` (Naive-Independent): an unsupervised VAE (``classifier_weight = 0``),
  then a classifier trained on the frozen ``mu`` of the training set (``stage2`` on all of ``mu``;
  default an MLP, as the paper's "classifier ... separately trained on the latent projection").

Both share Chroma-VAE's encoder, decoder, likelihoods and stage-2 machinery, so the comparison
changes only what the method is about. ERM (Naive-Class) and JTT are :mod:`robustrep.methods.erm`
and :mod:`robustrep.methods.jtt`.
"""

from __future__ import annotations

from robustrep.methods.chroma_vae import ChromaVAE


class NaiveVAEClass(ChromaVAE):
    """VAE classifier with the classifier on all of ``mu``; predictions come from that classifier.

    Args:
        **kwargs: as :class:`ChromaVAE` (``dim_z``, ``beta``, ``classifier_weight``, ``likelihood``,
            ...); ``z_p`` only sets which dimensions the diagnostics call z1.
    """

    def __init__(self, **kwargs) -> None:
        kwargs.update(classifier_on="z", predict="classifier", stage2="none")
        super().__init__(**kwargs)


class NaiveIndependent(ChromaVAE):
    """Unsupervised VAE, then a classifier on the frozen ``mu`` (all dimensions).

    Args:
        stage2: the classifier on ``mu``: ``mlp`` (default), ``logistic`` or ``knn``.
        **kwargs: as :class:`ChromaVAE`.
    """

    def __init__(self, stage2: str = "mlp", **kwargs) -> None:
        kwargs.update(classifier_on="z", classifier_weight=0.0, stage2_on="z", predict="stage2")
        super().__init__(stage2=stage2, **kwargs)  # classifier_weight 0: no z1-classifier is scored
