"""Masks from scores: keep exactly the highest-scoring entries, per layer or globally.

Everything here works on NumPy arrays keyed by kernel variable path (the keys of
``tf_supermask.layers.get_masks``): masks are chosen rarely, on the host, so the
same code serves every Keras backend. Ties are broken by position (earlier
entries first), so a selection is deterministic, or by given tie-break keys
(``tiebreak``: higher keys kept first, e.g. seeded random keys as Zhou et al.'s
``np.lexsort`` with a random key).
"""


import numpy as np

from tf_supermask.files import atomic_file

MASK_FILE = "mask.npz"


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


def top_masks(scores, counts=None, total=None, eligible=None, tiebreak=None):
    """Binary float32 masks keeping the highest scores.

    Args:
      scores: {path: array of scores}.
      counts: {path: entries to keep in that layer} (per-layer selection), or
      total: entries to keep over all layers ranked jointly (global selection).
      eligible: optional {path: boolean array}; entries where it is False are
        never kept (pruning a fraction of the *remaining* weights passes the
        current mask here).
      tiebreak: optional {path: array of keys}; among equal scores the higher key
        is kept first (default: the earlier position).

    Returns:
      {path: float32 array of the score's shape with exactly the requested
      number of ones}.

    Raises:
      ValueError: both or neither of counts and total, or a count larger than
        the eligible entries.
    """
    if (counts is None) == (total is None):
        raise ValueError("give exactly one of counts (per layer) or total (global)")
    eligible = eligible or {}
    tiebreak = tiebreak or {}
    masks = {path: np.zeros(np.shape(score), np.float32) for path, score in scores.items()}
    if counts is not None:
        missing = sorted(set(scores) - set(counts))
        if missing:
            raise ValueError(f"no kept count for layer(s) {missing}")
        for path, score in scores.items():
            positions, _, _ = _ranked(score, eligible.get(path), tiebreak.get(path))
            count = int(counts[path])
            if not 0 <= count <= positions.size:
                raise ValueError(f"{path}: cannot keep {count} of {positions.size} eligible "
                                 "entries")
            masks[path].reshape(-1)[positions[:count]] = 1.0
        return masks
    paths = list(scores)
    ranked = [_ranked(scores[path], eligible.get(path), tiebreak.get(path)) for path in paths]
    available = sum(positions.size for positions, _, _ in ranked)
    total = int(total)
    if not 0 <= total <= available:
        raise ValueError(f"cannot keep {total} of {available} eligible entries")
    layer_ids = np.concatenate([np.full(p.size, i) for i, (p, _, _) in enumerate(ranked)])
    positions = np.concatenate([p for p, _, _ in ranked])
    values = np.concatenate([v for _, v, _ in ranked])
    keys = np.concatenate([k for _, _, k in ranked])
    # A stable sort over (layer order, position) keeps remaining ties deterministic.
    keep = np.lexsort((-keys, -values))[:total]
    for index in keep:
        masks[paths[layer_ids[index]]].reshape(-1)[positions[index]] = 1.0
    return masks


def shuffle_masks(masks, seed):
    """Each layer's mask with its ones moved to random positions (same count per layer).

    The random-mask control of the lottery-ticket paper and the shuffle ablation
    of Frankle et al. (2021): it keeps per-layer sparsity and drops which
    weights were chosen.
    """
    rng = np.random.default_rng(seed)
    shuffled = {}
    for path, mask in masks.items():
        flat = np.asarray(mask, np.float32).reshape(-1).copy()
        rng.shuffle(flat)
        shuffled[path] = flat.reshape(np.shape(mask))
    return shuffled


def collapsed_layers(masks):
    """Paths of layers whose mask keeps nothing (a layer that would cut the network)."""
    return [path for path, mask in masks.items() if not np.any(np.asarray(mask))]


def save_masks(path, masks):
    """Writes {kernel path: 0/1 mask} as a compressed .npz (uint8), through a temporary file."""
    with atomic_file(path) as temp:
        with open(temp, "wb") as stream:
            np.savez_compressed(stream, **{key: np.asarray(value, np.uint8)
                                           for key, value in masks.items()})


def load_masks(path):
    """{kernel path: float32 mask} from a ``save_masks`` file."""
    with np.load(path) as data:
        return {key: data[key].astype(np.float32) for key in data.files}
