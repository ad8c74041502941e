"""tf-supermask-batch: runs a list of flagfiles, every run directory under one folder.

    tf-supermask-batch jobs/smoke.txt --output=runs/smoke --parallel=4 \\
        --extra_flags="--data_dir=$HOME/data --verbose=2"

Each line of the job list is ``[binary] FLAGFILE [--flag=value ...]`` (binary:
train, lottery, prune_init or finetune; default train). Finished jobs are
skipped, so running the same command again resumes a batch that was cut
short. The jobs inherit the environment: ``KERAS_BACKEND=jax`` runs them on
JAX. See tf_supermask/tools/batch.py.
"""

import signal
import sys

from absl import app, flags

from tf_supermask.bin.common import run_main
from tf_supermask.tools.batch import JobListError, parse_extra_flags, read_job_list, run_batch, select_jobs

flags.DEFINE_string("output", "", "Folder of the run directories, logs and summary.csv/.md.")
flags.DEFINE_integer("parallel", 1, "Jobs run at once (several small runs share a GPU well).")
flags.DEFINE_string("extra_flags", "", "Flags given to every job, before its own, e.g. "
                    "\"--data_dir=/tmp/data --verbose=2\".")
flags.DEFINE_bool("dry_run", False, "Print the commands and which jobs would be skipped.")
flags.DEFINE_integer("time_limit", 0, "Seconds after which running jobs are stopped (they "
                     "resume in a later batch) and no more start; 0: no limit.")
flags.DEFINE_string("only", "", "Run only the jobs whose name matches this regular expression.")
flags.DEFINE_string("shard", "", "i/n: run every n-th selected job starting at i (n hosts, "
                    "one shard each).")
FLAGS = flags.FLAGS


def main(argv):
    if len(argv) != 2:
        raise app.UsageError("give one job list: tf-supermask-batch JOBLIST --output=DIR")
    if not FLAGS.output:
        raise app.UsageError("--output is required")
    # Killed from outside (a scheduler's time limit): stop the jobs and write the summary.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        jobs = select_jobs(read_job_list(argv[1]), FLAGS.only, FLAGS.shard)
        report = run_batch(jobs, FLAGS.output, parallel=FLAGS.parallel,
                           extra_flags=parse_extra_flags(FLAGS.extra_flags),
                           dry_run=FLAGS.dry_run, time_limit=FLAGS.time_limit)
    except (JobListError, ValueError, FileNotFoundError) as error:
        raise app.UsageError(str(error)) from None
    if not FLAGS.dry_run:
        sys.exit(report.exit_code)


def run():
    run_main(main)


if __name__ == "__main__":
    run()
