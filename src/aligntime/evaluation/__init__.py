"""Evaluation: which strategy, which N, which scorer, at what cost.

``datasets`` loads prompt sets, ``runner`` samples and records one pool per
prompt, ``replay`` turns a pool into each strategy's outcome at each N,
``summary`` averages metrics over prompts (estimators in ``metrics``),
``plots`` and ``report`` write the outputs, ``experiment`` runs it all;
``pairwise`` and ``scorer_quality`` measure the scorers themselves.
"""
