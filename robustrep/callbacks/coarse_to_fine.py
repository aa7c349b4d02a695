"""Coarse-to-fine transfer: how much fine (stratum) information a coarse-label representation keeps.

The encoder trained on coarse labels is frozen; a linear classifier is fitted on the ``fine_label``
of the training set (frozen ``embed`` features, evaluation transform) and scored on the fine labels
of the test sets: ``c2f/acc`` (primary test set), ``c2f/<set>/acc`` (other sets) and, every
``every_n_epochs`` during fit, ``val/c2f/acc`` on the validation sets. Works for any method with
``embed`` on any benchmark whose examples carry ``fine_label`` (CIFAR10/100-Coarse, MNIST-Coarse,
the synthetic benchmark with ``strata_per_class > 1``).

The paper (reference_code.md section 4.5) trains the fine linear layer with AdamW for 100 epochs
on augmented images; we fit an L2-regularised logistic regression on un-augmented frozen features
(deterministic, seconds instead of an hour); see :class:`~robustrep.callbacks.LinearProbe` for the
solver options.
"""

from __future__ import annotations

from robustrep.callbacks.linear_probe import LinearProbe


class CoarseToFine(LinearProbe):
    """:class:`LinearProbe` on ``fine_label``, logged as ``c2f/...``.

    Args:
        every_n_epochs: also probe the validation sets every n epochs (``val/c2f/acc``); 0 = test
            only.
        C, max_iter, sklearn_max_examples: solver settings, see :class:`LinearProbe`.
    """

    def __init__(
        self,
        every_n_epochs: int = 0,
        C: float = 1.0,
        max_iter: int = 500,
        sklearn_max_examples: int = 20000,
    ) -> None:
        super().__init__(
            every_n_epochs,
            target="fine_label",
            prefix="c2f",
            C=C,
            max_iter=max_iter,
            sklearn_max_examples=sklearn_max_examples,
            group_metrics=False,
        )
