"""tf-supermask-study: each paper's table as one command, run resumably, shown beside the paper.

    tf-supermask-study list
    tf-supermask-study run edgepopup --scale=cpu --seeds=0 --parallel=2
    tf-supermask-study status edgepopup --scale=cpu
    tf-supermask-study table edgepopup --scale=cpu      # markdown, CSV and PNG
    tf-supermask-study table all --root=runs/results/studies   # every table, README.md index
    tf-supermask-study check edgepopup --scale=cpu      # exit status 1 if a cell is out
    tf-supermask-study pack edgepopup --scale=cpu --output=records/   # results.json,
        # flags.txt, metrics.csv of the finished runs (a folder, or FILE.tar.gz to carry)
    tf-supermask-study unpack FILE.tar.gz --root=ROOT   # records (and cut runs) under ROOT

Scales: ``cpu`` is a reduced setting that finishes on 2 CPU cores (labelled "reduced"
wherever it is shown); ``full`` is the paper's schedule (a GPU machine). Runs go to
``--root/STUDY/SCALE/`` through the batch runner (tf-supermask-batch): running the same
command again skips finished runs and resumes one cut by --time_limit or a kill from its
last finished epoch. ``--study_file=FILE.json`` adds studies of one's own (see
tf_supermask/tools/studies.py, study_from_dict). The runs inherit the environment:
``KERAS_BACKEND=jax`` runs them on JAX.
"""

import signal
import sys

from absl import app, flags

from tf_supermask.bin.common import run_main

COMMANDS = ("list", "run", "status", "table", "check", "pack", "unpack")

flags.DEFINE_enum("scale", "cpu", ["cpu", "full"], "cpu: reduced, finishes on 2 cores; full: "
                  "the paper's schedule.")
flags.DEFINE_string("seeds", "", "Comma-separated seeds (default: the study's).")
flags.DEFINE_string("only", "", "Only the cells whose name holds this text, e.g. 'model=conv4'.")
flags.DEFINE_integer("parallel", 1, "Runs at once.")
flags.DEFINE_integer("time_limit", 0, "Seconds after which running runs stop (they resume on "
                     "the next run) and no more start; 0: no limit.")
flags.DEFINE_string("root", "runs/studies", "Parent folder of the studies' run directories.")
flags.DEFINE_string("extra_flags", "", "Flags given to every run, e.g. \"--data_dir=DIR\".")
flags.DEFINE_bool("dry_run", False, "run: print the commands, run nothing.")
flags.DEFINE_string("output", "", "table: path prefix of the .md/.csv/.png (default "
                    "ROOT/STUDY/SCALE/table); pack: a .tar.gz file or a folder (required).")
flags.DEFINE_string("study_file", "", "A JSON file declaring more studies.")
flags.DEFINE_bool("rerun_stale", False, "run: finished runs made with other flags than the "
                  "study's today are set aside (renamed NAME.stale-N) and run again.")
flags.DEFINE_string("partial_output", "", "pack: also pack cut runs' directories (without "
                    "TensorBoard events) into this .tar.gz, so they resume where unpacked.")
flags.DEFINE_float("partial_mib", 15.0, "pack: most MiB of cut runs in --partial_output.")
FLAGS = flags.FLAGS


def _studies():
    from tf_supermask.tools.study_catalog import STUDIES
    from tf_supermask.tools.studies import load_study_file

    studies = dict(STUDIES)
    if FLAGS.study_file:
        studies.update(load_study_file(FLAGS.study_file))
    return studies


def _list(studies):
    from tf_supermask.tools.studies import scale_label

    for study in studies.values():
        print(f"{study.name}: {study.title}")
        for scale in study.scales:
            cells = study.cells_at(scale)
            published = sum(scale in cell.published for cell in cells)
            print(f"  {scale_label(scale)}: {len(cells)} cells x {len(study.seeds)} seeds, "
                  f"{published} with a published number; {study.scales[scale].note}")


def _status(study, scale, seeds, only):
    from tf_supermask.tools import batch, studies as lib

    states = lib.cell_states(study, scale, FLAGS.root, seeds, only)
    print(f"study {study.name} at scale {lib.scale_label(scale)} "
          f"({lib.output_folder(FLAGS.root, study, scale)}):")
    width = max(len(state.cell.name) for state in states)
    for state in states:
        values = (f", mean {sum(state.values) / len(state.values):.2f}" if state.values else "")
        stale = f", {state.stale} stale" if state.stale else ""
        print(f"  {state.cell.name:<{width}}  {state.done} done, {state.running} running or "
              f"cut, {state.missing} missing{stale}{values}")
    for name, reason in lib.stale_runs(study, scale, FLAGS.root, seeds, only).items():
        print(f"stale (not counted; run --rerun_stale): {name}: {reason}")
    done = sum(state.done for state in states)
    total = sum(state.total for state in states)
    left = lib.estimate_seconds_left(study, scale, FLAGS.root, seeds, only,
                                     max(1, FLAGS.parallel))
    estimate = ("nothing left" if left == 0 else "no finished run to estimate from"
                if left is None else f"about {batch.format_seconds(left)} left at "
                f"{max(1, FLAGS.parallel)} at a time")
    print(f"{done}/{total} cell-seeds done; {estimate}")


def main(argv):
    if len(argv) < 2 or argv[1] not in COMMANDS:
        raise app.UsageError(f"give a command: {' | '.join(COMMANDS)} "
                             "(tf-supermask-study --help)")
    command, rest = argv[1], argv[2:]
    from tf_supermask.tools import batch, studies as lib

    try:
        studies = _studies()
        if command == "list":
            if rest:
                raise app.UsageError(f"list takes no arguments, got {rest}")
            _list(studies)
            return
        if command == "unpack":
            if not rest:
                raise app.UsageError("give the archives: tf-supermask-study unpack FILE.tar.gz "
                                     "... --root=ROOT")
            for source in rest:
                folders = lib.unpack(source, FLAGS.root)
                print(f"{source}: {len(folders)} run folders under {FLAGS.root}")
            return
        if command == "table" and rest == ["all"]:
            for path in lib.write_index(studies, FLAGS.root):
                print(path)
            return
        if len(rest) != 1:
            raise app.UsageError(f"give one study: tf-supermask-study {command} STUDY "
                                 f"(one of {', '.join(studies)})")
        if rest[0] not in studies:
            raise lib.StudyError(f"no study {rest[0]!r}; choose one of {', '.join(studies)}")
        study, scale = studies[rest[0]], FLAGS.scale
        lib.check_scale(study, scale)
        seeds = lib.parse_seeds(FLAGS.seeds) if FLAGS.seeds else None
        if FLAGS.parallel < 1:
            raise lib.StudyError(f"--parallel must be at least 1, got {FLAGS.parallel}")
        if command == "run":
            signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
            report = lib.run_study(study, scale, FLAGS.root, seeds, FLAGS.only,
                                   parallel=FLAGS.parallel, time_limit=FLAGS.time_limit,
                                   extra_flags=batch.parse_extra_flags(FLAGS.extra_flags),
                                   dry_run=FLAGS.dry_run, rerun_stale=FLAGS.rerun_stale)
            if not FLAGS.dry_run:
                sys.exit(report.exit_code)
        elif command == "status":
            _status(study, scale, seeds, FLAGS.only)
        elif command == "table":
            for path in lib.write_table(study, scale, FLAGS.root, FLAGS.output, seeds,
                                        FLAGS.only):
                print(path)
        elif command == "pack":
            if not FLAGS.output:
                raise lib.StudyError("pack: give --output=FILE.tar.gz or --output=FOLDER")
            if FLAGS.partial_output and not FLAGS.partial_output.endswith((".tar.gz", ".tgz")):
                raise lib.StudyError(f"--partial_output={FLAGS.partial_output}: give a .tar.gz")
            report = lib.pack(study, scale, FLAGS.root, FLAGS.output, seeds, FLAGS.only,
                              FLAGS.partial_output, FLAGS.partial_mib)
            print(f"packed into {FLAGS.output}: records of {len(report.records)} finished "
                  f"runs, {len(report.partial)} cut runs to resume"
                  + (f"; {len(report.skipped)} cut runs left out (over --partial_mib)"
                     if report.skipped else ""))
        else:
            lines = lib.check(study, scale, FLAGS.root, seeds, FLAGS.only)
            if not lines:
                print(f"study {study.name} at scale {lib.scale_label(scale)}: no finished cell")
            for line in lines:
                print(f"{line.verdict:<9} {line.cell}: {line.text}")
            out = [line for line in lines if line.verdict == "OUT"]
            checked = [line for line in lines if line.verdict != "unchecked"]
            print(f"{len(checked) - len(out)}/{len(checked)} checked cells within tolerance")
            if out:
                sys.exit(1)
    except batch.JobListError as error:
        raise lib.StudyError(str(error).replace("\n", " ")) from None


def run():
    run_main(main)


if __name__ == "__main__":
    run()
