"""tf-supermask-export: export a finished run's masked network.

    tf-supermask-export runs/quickstart                       # saved_model/ and supermask.npz
    tf-supermask-export runs/quickstart --format=compact --output=/tmp/ticket
    tf-supermask-export runs/ticket                           # a lottery: its last finished level
    tf-supermask-export runs/ticket --level=3                 # ... or level 3

Reads <RUN_DIR>/checkpoints/final.keras, the run's flags.txt and results.json,
and writes into --output (default: the run directory):
  saved_model/    a SavedModel with the masks folded into plain kernels (zeros
                  where pruned, no scores, one copy of each kernel). Call the
                  loaded object (or its `serve`, or the `serving_default`
                  signature) on raw NHWC images named `images`, uint8 or float
                  in [0, 255]: the run's normalisation is inside, and it returns
                  {"logits", "probabilities"};
  supermask.npz   the compact file: model name, options and seed, bit-packed
                  masks, and only the variables that training changed; load it
                  with tf_supermask.export.load_compact on the same backend.
Each output is reloaded and checked against the run's model unless --noverify;
if a check fails, what was written is removed, so the command can run again.

An experiment directory exports one of its runs: a lottery experiment
(tf-supermask-lottery) its last finished level, or --level=N, into
<RUN_DIR>/level_N/; a fine-tuning experiment (tf-supermask-finetune) its final
fine-tuned run. A comparison (--compare) has one run per arm: the error names
them, export one (tf-supermask-export RUN_DIR/sparsity_0.5/lottery).

A run whose weights trained (a lottery level, fine-tuning, pruning at
initialization) cannot regenerate its kernels from a seed: its compact file
stores them as float32, and a note on stderr gives its size.
"""

import sys
import warnings

from absl import app, flags

from tf_supermask.bin.common import run_main

flags.DEFINE_enum("format", "auto", ["auto", "saved_model", "compact", "both"],
                  "What to write: auto (both for a registered model, the SavedModel for a "
                  "user's own --model, which the compact file cannot rebuild).")
flags.DEFINE_string("output", "", "Folder receiving saved_model/ and supermask.npz "
                    "(empty: the run directory).")
flags.DEFINE_bool("overwrite", False, "Replace existing outputs.")
flags.DEFINE_bool("verify", True, "Reload each output and compare its predictions on random "
                  "inputs with the run's model.")
flags.DEFINE_bool("allow_kernels", True, "Compact format: store kernels that training changed "
                  "(the file is then not compact, and a note says so); false refuses them.")
flags.DEFINE_integer("level", None, "Lottery experiments: the level to export; unset, the last "
                     "finished level.", lower_bound=0)
FLAGS = flags.FLAGS


def _note(text):
    """One plain line on stderr (no Python warning source line)."""
    sys.stderr.write("note: " + " ".join(str(text).split()) + "\n")


def main(argv):
    if len(argv) != 2:
        raise app.UsageError("give exactly one run directory: tf-supermask-export RUN_DIR")
    from tf_supermask.tools.export_run import export_run, export_stage

    formats = {"auto": None, "both": ("saved_model", "compact")}.get(FLAGS.format,
                                                                     (FLAGS.format,))
    # A missing run, a bad --level, existing outputs and failed checks end it with one
    # line (run_main).
    _, chosen = export_stage(argv[1], FLAGS.level)
    if chosen:
        _note(chosen)
    # What the export warns about (kernels stored in the compact file) is said plainly,
    # once each, without Python's warning source line.
    with warnings.catch_warnings(record=True) as caught:
        try:
            written = export_run(argv[1], formats, output=FLAGS.output or None,
                                 overwrite=FLAGS.overwrite, verify=FLAGS.verify,
                                 allow_kernels=FLAGS.allow_kernels, level=FLAGS.level)
        except RuntimeError as error:  # a failed check (what was written is removed)
            raise ValueError(str(error)) from None
    for message in dict.fromkeys(str(warning.message) for warning in caught):
        _note(message)
    for path in written.values():
        print(path)


def run():
    run_main(main)


if __name__ == "__main__":
    run()
