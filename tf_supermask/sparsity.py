"""The sparsity vocabulary, the ``Mask`` value, and how a rate is spread over layers.

Words (docs/architecture.md, "Sparsity words", says the same):

- **density**: the fraction of weights KEPT (a layer's, or all masked weights').
  Edge-popup's ``k`` (``--k``) is a density.
- **sparsity**: the fraction PRUNED, ``1 - density`` (``--sparsity`` flags).
- **prune rate**: the fraction of the weights still kept that one pruning step
  removes (IMP's per-level ``--prune_rate*``); after L steps at rate r the
  density is about (1 - r)^L.
- **count**: a number of weights kept. A rate becomes a count only through
  ``tf_supermask.counting`` (each method's reference rounding rule).

A ``Mask`` is ``{kernel variable path: boolean array}`` (the keys of
``tf_supermask.layers.get_masks``): a dict, so ``set_masks(model, mask)`` and
every mapping use work, with what pruning, experiments, export and reports need
(top entries of scores, save/load, density, overlap, shuffle). Masks are chosen
rarely, on the host, in NumPy, so one code path serves every Keras backend.

Example:

>>> import numpy as np
>>> from tf_supermask.sparsity import Mask, allocate
>>> scores = {"a": np.array([3., 1., 2., 0.]), "b": np.array([[5., 4.], [0., 1.]])}
>>> mask = Mask.top(scores, **allocate({"a": 4, "b": 4}, density=0.5))
>>> mask["a"].tolist(), round(mask.density(), 2)
([True, False, True, False], 0.5)
>>> ranked_together = Mask.top(scores, **allocate(scores, density=0.25, scheme="global"))
>>> bool(ranked_together["a"].any()), ranked_together["b"].tolist()
(False, [[True, True], [False, False]])
"""

from typing import Dict, Mapping

import numpy as np

from tf_supermask import streams
from tf_supermask.counting import kept_count, kept_counts
from tf_supermask.files import atomic_file

MASK_FILE = "mask.npz"
ALLOCATIONS = ("layer", "global", "kind", "erk")


def _ranked(score, eligible, tiebreak=None):
    """(flat positions of eligible entries, their scores, their tie-break keys), highest
    score first, ties by the higher key (default: by position)."""
    flat = np.asarray(score, dtype=np.float64).reshape(-1)
    if np.isnan(flat).any():
        raise ValueError("scores contain NaN")
    positions = np.arange(flat.size) if eligible is None else np.flatnonzero(
        np.asarray(eligible).reshape(-1))
    keys = (np.zeros(flat.size) if tiebreak is None
            else np.asarray(tiebreak, np.float64).reshape(-1))[positions]
    order = np.lexsort((-keys, -flat[positions]))  # stable: equal keys stay by position
    return positions[order], flat[positions][order], keys[order]


class Mask(dict):
    """Per-layer boolean masks keyed by kernel variable path (True: kept).

    Build one with ``Mask(arrays)`` (any 0/1 or boolean arrays), ``Mask.ones``,
    ``Mask.top`` or ``Mask.load``; pass it to ``tf_supermask.layers.set_masks``.
    """

    def __init__(self, arrays=(), **kwargs):
        super().__init__()
        for path, value in dict(arrays, **kwargs).items():
            self[path] = np.asarray(value) != 0

    @classmethod
    def ones(cls, shapes):
        """Everything kept: {path: shape or array} -> Mask."""
        return cls({path: np.ones(np.shape(value) if not isinstance(value, tuple) else value,
                                  bool) for path, value in shapes.items()})

    @classmethod
    def top(cls, scores, counts=None, total=None, eligible=None, tiebreak=None):
        """The highest scores kept, exactly `counts` per layer or `total` over all layers.

        Args:
          scores: {path: array of scores}.
          counts: {path: entries to keep in that layer} (per-layer selection), or
          total: entries to keep over all layers ranked jointly (global selection);
            ``allocate`` gives either as keyword arguments.
          eligible: optional {path: boolean array}; entries where it is False are never
            kept (pruning a fraction of the *remaining* weights passes the current mask).
          tiebreak: optional {path: array of keys}; among equal scores the higher key is
            kept first (default: the earlier position, so a selection is deterministic).

        Raises:
          ValueError: both or neither of counts and total, a layer without a count, a
            count larger than the eligible entries, NaN scores.
        """
        if (counts is None) == (total is None):
            raise ValueError("give exactly one of counts (per layer) or total (global)")
        eligible = eligible or {}
        tiebreak = tiebreak or {}
        masks = {path: np.zeros(np.shape(score), bool) for path, score in scores.items()}
        if counts is not None:
            missing = sorted(set(scores) - set(counts))
            if missing:
                raise ValueError(f"no kept count for layer(s) {missing}")
            for path, score in scores.items():
                positions, _, _ = _ranked(score, eligible.get(path), tiebreak.get(path))
                count = int(counts[path])
                if not 0 <= count <= positions.size:
                    raise ValueError(f"{path}: cannot keep {count} of {positions.size} "
                                     "eligible entries")
                masks[path].reshape(-1)[positions[:count]] = True
            return cls(masks)
        paths = list(scores)
        ranked = [_ranked(scores[path], eligible.get(path), tiebreak.get(path))
                  for path in paths]
        available = sum(positions.size for positions, _, _ in ranked)
        total = int(total)
        if not 0 <= total <= available:
            raise ValueError(f"cannot keep {total} of {available} eligible entries")
        layer_ids = np.concatenate([np.full(p.size, i) for i, (p, _, _) in enumerate(ranked)]
                                   or [np.zeros(0, int)])
        positions = np.concatenate([p for p, _, _ in ranked] or [np.zeros(0, int)])
        values = np.concatenate([v for _, v, _ in ranked] or [np.zeros(0)])
        keys = np.concatenate([k for _, _, k in ranked] or [np.zeros(0)])
        # A stable sort over (layer order, position) keeps remaining ties deterministic.
        for index in np.lexsort((-keys, -values))[:total]:
            masks[paths[layer_ids[index]]].reshape(-1)[positions[index]] = True
        return cls(masks)

    # Files -----------------------------------------------------------------------------

    def save(self, path):
        """Writes the mask as a compressed .npz of uint8 arrays, through a temporary file."""
        with atomic_file(path) as temp:
            with open(temp, "wb") as stream:
                np.savez_compressed(stream, **{key: np.asarray(value, np.uint8)
                                               for key, value in self.items()})

    @classmethod
    def load(cls, path):
        """A mask from a ``save`` file (or any .npz of 0/1 arrays keyed by kernel path)."""
        with np.load(path) as data:
            return cls({key: data[key] for key in data.files})

    # Facts -----------------------------------------------------------------------------

    def kept(self) -> int:
        return int(sum(int(value.sum()) for value in self.values()))

    def size(self) -> int:
        return int(sum(value.size for value in self.values()))

    def density(self) -> float:
        """Fraction kept over all layers (1.0 for an empty mask)."""
        size = self.size()
        return self.kept() / size if size else 1.0

    def sparsity(self) -> float:
        return 1.0 - self.density()

    def density_per_layer(self) -> Dict[str, float]:
        return {path: float(value.mean()) for path, value in self.items()}

    def collapsed(self):
        """Paths of layers that keep nothing (a layer that would cut the network)."""
        return [path for path, value in self.items() if not value.any()]

    def overlap(self, other: Mapping) -> float:
        """|self & other| / |self|: the share of this mask's kept weights `other` keeps too
        (1.0 when this mask keeps nothing). Both must have the same layers and shapes."""
        other = other if isinstance(other, Mask) else Mask(other)
        if sorted(other) != sorted(self):
            raise ValueError(f"masks over different layers: {sorted(self)} vs {sorted(other)}")
        kept = self.kept()
        both = sum(int(np.logical_and(value, other[path]).sum()) for path, value in self.items())
        return both / kept if kept else 1.0

    # New masks -------------------------------------------------------------------------

    def shuffled(self, seed):
        """Each layer's kept positions moved at random (same count per layer): the
        random-mask control of the lottery-ticket paper and the shuffle ablation of
        Frankle et al. (2021). `seed` seeds the ``shuffle`` stream."""
        rng = streams.rng("shuffle", seed)
        out = {}
        for path, value in self.items():
            # Shuffled as float32, as before the Mask type: the same permutation draws.
            flat = np.asarray(value, np.float32).reshape(-1).copy()
            rng.shuffle(flat)
            out[path] = flat.reshape(value.shape)
        return Mask(out)

    def as_float(self) -> Dict[str, np.ndarray]:
        """{path: float32 0/1 array}."""
        return {path: value.astype(np.float32) for path, value in self.items()}


def erk_densities(shapes, density, power=1.0):
    """Per-layer densities of the Erdős-Rényi-kernel allocation (Evci et al., RigL).

    A layer of shape (k_1, ..., k_m) gets a density proportional to
    ``(sum k_i / prod k_i) ** power`` (for a dense layer (n_in + n_out) / (n_in n_out)),
    scaled so that the total kept is ``density`` of all weights; a layer whose density
    would pass 1 is kept dense and the rest are scaled again (RigL's
    ``get_sparsities_erdos_renyi``).

    Args:
      shapes: {path: kernel shape}.
      density: overall fraction kept, in [0, 1].
      power: the exponent (RigL's ``erk_power_scale``, 1.0 by default).

    Returns:
      {path: density in [0, 1]}.
    """
    sizes = {path: int(np.prod(shape)) for path, shape in shapes.items()}
    raw = {path: (float(np.sum(shape)) / sizes[path]) ** power for path, shape in shapes.items()}
    dense = set()
    while True:
        budget = density * sum(sizes.values()) - sum(sizes[path] for path in dense)
        divisor = sum(raw[path] * sizes[path] for path in sizes if path not in dense)
        epsilon = budget / divisor if divisor else 0.0
        over = {path for path in sizes if path not in dense and epsilon * raw[path] > 1.0}
        if not over:
            break
        dense |= over
    return {path: 1.0 if path in dense else epsilon * raw[path] for path in sizes}


def allocate(sizes, density=None, sparsity=None, scheme="layer", rule="nearest",
             kinds=None, kind_densities=None, shapes=None):
    """How many weights each layer keeps: keyword arguments for ``Mask.top``.

    Args:
      sizes: {path: entries the rate applies to} (ints, or arrays whose size counts;
        pass the eligible counts to prune a fraction of what remains).
      density, sparsity: the overall rate (one of the two).
      scheme: "layer" (every layer the same density), "global" (one count over all
        layers, ranked together), "kind" (each layer the density of its kind,
        ``kind_densities[kinds[path]]``; `density` is then unused) or "erk"
        (``erk_densities`` of `shapes`).
      rule: the ``tf_supermask.counting`` rule that turns a rate into a count.

    Returns:
      ``{"counts": {path: kept}}``, or ``{"total": kept}`` for "global".
    """
    if scheme not in ALLOCATIONS:
        raise ValueError(f"allocation must be one of {', '.join(ALLOCATIONS)}, got {scheme!r}")
    counts = {path: int(value) if isinstance(value, (int, np.integer)) else int(np.size(value))
              for path, value in sizes.items()}
    if scheme == "kind":
        return {"counts": {path: kept_count(size, kept=kind_densities[kinds[path]], rule=rule)
                           for path, size in counts.items()}}
    if (density is None) == (sparsity is None):
        raise ValueError("give the density or the sparsity, not both or neither")
    if scheme == "erk":
        rate = 1.0 - float(sparsity) if density is None else float(density)
        layer = erk_densities(shapes or {path: (n,) for path, n in counts.items()}, rate)
        return {"counts": {path: kept_count(counts[path], kept=min(1.0, layer[path]), rule=rule)
                           for path in counts}}
    return kept_counts(counts, kept=density, pruned=sparsity, scope=scheme, rule=rule)
