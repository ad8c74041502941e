"""Inspecting a run's masks outside TensorBoard: per-layer sparsity as numbers and as a PNG."""

import json
import os

import numpy as np

from tf_supermask.choices import FINAL_MODEL, RESULTS_FILE
from tf_supermask.files import atomic_file


def layer_sparsity(run_dir):
    """Per-layer mask statistics of a run, in layer order.

    Counts come from the run's final model (``checkpoints/final.keras``); a run
    without it falls back to the fractions in ``results.json`` (counts None).

    Returns:
      A list of dicts: ``path`` (kernel variable path), ``kept`` and ``total``
      (weights, or None), ``remaining`` (fraction kept) and ``sparsity`` (1 - remaining).

    Raises:
      FileNotFoundError: the run has neither file.
    """
    model_path = os.path.join(run_dir, FINAL_MODEL)
    rows = []
    if os.path.exists(model_path):
        import keras

        import tf_supermask.models  # noqa: F401  (registers the custom layers)
        from tf_supermask.layers import masked_layers

        model = keras.saving.load_model(model_path, compile=False)
        for layer in masked_layers(model):
            mask = np.asarray(keras.ops.convert_to_numpy(layer.get_mask())) != 0
            rows.append({"path": layer.kernel_variable.path, "kept": int(mask.sum()),
                         "total": int(mask.size)})
    else:
        results_path = os.path.join(run_dir, RESULTS_FILE)
        if not os.path.exists(results_path):
            raise FileNotFoundError(f"{run_dir} holds neither {FINAL_MODEL} nor {RESULTS_FILE}: "
                                    "no finished run to inspect")
        with open(results_path) as stream:
            per_layer = json.load(stream).get("weights_remaining_per_layer", {})
        rows = [{"path": path, "kept": None, "total": None, "remaining": float(fraction)}
                for path, fraction in per_layer.items()]
    for row in rows:
        if row["total"]:
            row["remaining"] = row["kept"] / row["total"]
        row["sparsity"] = 1.0 - row["remaining"]
    return rows


def plot_mask_sparsity(run_dir, path):
    """Writes a PNG bar chart of a run's per-layer weights remaining to `path`.

    One horizontal bar per masked layer (first layer at the top) giving the
    fraction of its weights kept, labelled with ``kept / total`` weights; a
    dashed line marks the fraction kept over all masked layers. Drawn with
    matplotlib's Agg canvas (no display needed, no global backend change) and
    written through a temporary file and a rename.

    Returns:
      `path`.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = layer_sparsity(run_dir)
    if not rows:
        raise ValueError(f"the run in {run_dir} has no masked layers")
    names = [row["path"] for row in rows]
    remaining = np.array([row["remaining"] for row in rows])
    counted = all(row["total"] for row in rows)
    if counted:
        overall = sum(row["kept"] for row in rows) / sum(row["total"] for row in rows)
    else:
        overall = float(remaining.mean())

    figure = Figure(figsize=(8, 1.2 + 0.4 * len(rows)))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    positions = np.arange(len(rows))[::-1]
    axes.barh(positions, remaining, color="#4878a8", height=0.7)
    for position, row in zip(positions, rows):
        label = f"{row['remaining']:.1%}"
        if row["total"]:
            label = f"{row['kept']:,} / {row['total']:,}  ({label})"
        axes.text(min(row["remaining"], 1.0) + 0.01, position, label, va="center", fontsize=8)
    axes.axvline(overall, color="#c44e52", linestyle="--", linewidth=1,
                 label=f"all masked layers: {overall:.1%}" + ("" if counted else " (layer mean)"))
    axes.set_yticks(positions)
    axes.set_yticklabels(names, fontsize=8)
    axes.set_xlim(0, 1.45)
    axes.set_xticks(np.linspace(0, 1, 6))
    axes.set_xlabel("fraction of weights remaining (kept by the mask)")
    axes.set_title(f"Mask sparsity per layer: {os.path.basename(os.path.abspath(run_dir))}",
                   fontsize=10)
    axes.legend(loc="lower right", fontsize=8)
    figure.tight_layout()

    with atomic_file(path) as temp:
        figure.savefig(temp, format="png", dpi=100)
    return path
