"""tf-supermask-bench: training images/s per model and mask mode, and the masked/dense ratio.

    tf-supermask-bench --models=fc,conv2,conv4,conv6 --masks=dense,bernoulli,topk,fixed \
        --output=runs/results/bench_cpu.json
"""

import json
import os

from absl import app, flags

from tf_supermask.tools.benchmark import run_benchmark

flags.DEFINE_list("models", ["fc", "conv2", "conv4", "conv6"], "Registered models to measure.")
flags.DEFINE_list("masks", ["dense", "bernoulli", "topk", "fixed"], "Mask modes to measure.")
flags.DEFINE_integer("batch_size", 128, "Batch size.")
flags.DEFINE_integer("steps", 0, "Steps per timed round (0: about 2 seconds' worth).")
flags.DEFINE_integer("repeats", 3, "Interleaved timed rounds per mode; the fastest is reported.")
flags.DEFINE_float("k", 0.5, "Fraction of weights kept by topk.")
flags.DEFINE_enum("jit_compile", "auto", ["auto", "true", "false"], "XLA compilation.")
flags.DEFINE_string("output", "", "Write the records as JSON here.")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    records = run_benchmark(FLAGS.models, FLAGS.masks, FLAGS.batch_size, FLAGS.steps,
                            FLAGS.repeats, FLAGS.k, FLAGS.jit_compile)
    if FLAGS.output:
        os.makedirs(os.path.dirname(os.path.abspath(FLAGS.output)), exist_ok=True)
        with open(FLAGS.output, "w") as stream:
            json.dump(records, stream, indent=2)
        print(f"wrote {FLAGS.output}")


def run():
    app.run(main)


if __name__ == "__main__":
    run()
