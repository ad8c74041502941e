"""tf-supermask-report: tables and plots from finished run directories.

    tf-supermask-report runs/lottery_* --output=runs/reports/lottery_fc
    tf-supermask-report --masks runs/my_run        # per-layer sparsity PNG of one run
    tf-supermask-report runs/results/superseded/lottery_fc_fashion_mnist.csv --plots_only \
        --output=/tmp/lottery_fc                     # redraw the plots of an earlier report

Writes <output>.csv (every point), <output>.md (mean and min/max over seeds per
variant and level) and <output>.png (test accuracy against % of weights
remaining, log scale; line: mean over seeds, band: min to max over seeds),
plus <output>_untrained.png when lottery experiments evaluated their masks on
the untrained network. Variants are the flags that differ between the runs
(and the backend); the level is the lottery level, k for top-k runs, the
sparsity for pruning at initialization. Comparisons (tf-supermask-finetune
--compare) give one line per arm, and their initial-vs-trained weight
correlations are tabulated in <output>.md.

The kind of experiment (train, lottery, finetune, comparison, prune_init) is part
of the variant when the runs mix kinds. The legend sits below the axes; when the
differing flags make a label too long, each variant is labelled by a key (V1,
V2, ...) and its first flags, and <output>.md lists every key's full flags. The
plots are titled by the runs' models and datasets unless --title.
"""

import os

from absl import app, flags

from tf_supermask.bin.common import run_main

flags.DEFINE_string("output", "report", "Prefix of the files written (.csv, .md, .png), e.g. "
                    "runs/reports/NAME (runs/results/ holds the committed results).")
flags.DEFINE_string("title", "", "Title of the plots (empty: the runs' models and datasets).")
flags.DEFINE_bool("plots_only", False, "Write only the PNGs (keeps an existing .csv and .md).")
flags.DEFINE_bool("masks", False, "Instead: draw each run's per-layer sparsity to "
                  "<run_dir>/mask_sparsity.png.")
FLAGS = flags.FLAGS


def main(argv):
    run_dirs = argv[1:]
    if not run_dirs:
        raise app.UsageError("give one or more run directories")
    # Missing or unfinished runs end it with one line (run_main).
    if FLAGS.masks:
        from tf_supermask.tools.inspect import plot_mask_sparsity

        for run_dir in run_dirs:
            path = os.path.join(run_dir, "mask_sparsity.png")
            plot_mask_sparsity(run_dir, path)
            print(path)
        return
    from tf_supermask.tools.report import write_report

    for path in write_report(run_dirs, FLAGS.output, FLAGS.title or None,
                             plots_only=FLAGS.plots_only):
        print(path)


def run():
    run_main(main)


if __name__ == "__main__":
    run()
