"""tf-supermask-report: tables and plots from finished run directories.

    tf-supermask-report runs/lottery_* --output=runs/results/lottery_fc
    tf-supermask-report --masks runs/my_run        # per-layer sparsity PNG of one run

Writes <output>.csv (every point), <output>.md (mean and min/max over seeds per
variant and level) and <output>.png (test accuracy against percent of weights
remaining, log scale), plus <output>_untrained.png when lottery experiments
evaluated their masks on the untrained network. Comparisons
(tf-supermask-finetune --compare) give one line per arm, and their
initial-vs-trained weight correlations are tabulated in <output>.md.
"""

import os

from absl import app, flags

flags.DEFINE_string("output", "report", "Prefix of the files written (.csv, .md, .png).")
flags.DEFINE_string("title", "", "Title of the plots.")
flags.DEFINE_bool("masks", False, "Instead: draw each run's per-layer sparsity to "
                  "<run_dir>/mask_sparsity.png.")
FLAGS = flags.FLAGS


def main(argv):
    run_dirs = argv[1:]
    if not run_dirs:
        raise app.UsageError("give one or more run directories")
    try:
        if FLAGS.masks:
            from tf_supermask.tools.inspect import plot_mask_sparsity

            for run_dir in run_dirs:
                path = os.path.join(run_dir, "mask_sparsity.png")
                plot_mask_sparsity(run_dir, path)
                print(path)
            return
        from tf_supermask.tools.report import write_report

        for path in write_report(run_dirs, FLAGS.output, FLAGS.title or None):
            print(path)
    except (ValueError, FileNotFoundError) as error:
        raise app.UsageError(str(error)) from None


def run():
    app.run(main)


if __name__ == "__main__":
    run()
