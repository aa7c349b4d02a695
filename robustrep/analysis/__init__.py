"""Downstream applications on frozen embeddings: strata recovery, noisy labels, coresets.

``robustrep analyze strata|noisy-labels|coreset``
(:func:`robustrep.analysis.commands.analyze_command`).
"""
