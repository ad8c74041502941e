"""Experiment drivers: each chains training runs and writes one experiment folder.

- ``lottery``: iterative magnitude pruning with rewinding, Zhou et al.'s criteria.
- ``finetune``: prune a trained dense network and fine-tune it.
- ``comparison``: Liu et al.'s lottery / rewind / fine-tune arms at equal budget.
- ``prune_init``: one pruning-at-initialization run.

Each module has its configuration dataclass and a ``run(config)``.
"""
