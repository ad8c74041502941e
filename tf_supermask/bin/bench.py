"""tf-supermask-bench: training images/s per model and mask mode, and the masked/dense ratio,
for the bare training step and for whole epochs through the input pipeline.

    tf-supermask-bench --models=fc,conv2,conv4,conv6 --masks=dense,bernoulli,topk,fixed \
        --output=runs/results/bench_cpu.json
    tf-supermask-bench --models=keras.applications.ResNet50 --image_size=64 --batch_size=32 \
        --masks=dense,topk,bernoulli,fixed --noepochs
"""

import json
import os

from absl import flags

from tf_supermask.bin.common import run_main

flags.DEFINE_list("models", ["fc", "conv2", "conv4", "conv6"],
                  "Models to measure: registered names (fc, conv4, resnet20, ...) or your "
                  "own in --model's forms: keras.applications.<Name> (e.g. "
                  "keras.applications.ResNet50,keras.applications.MobileNetV2; weights=None), "
                  "package.module:function, a .keras file. A user's model takes --image_size "
                  "inputs and 10 classes, and is timed as its dense original and sparsified "
                  "(tf_supermask.models.sparsify) in each mask mode.")
flags.DEFINE_integer("image_size", 0, "Side of the square RGB inputs of a user's model "
                     "(0: 64) and of the registered image models (0: 32).")
flags.DEFINE_list("masks", ["dense", "bernoulli", "topk", "fixed"], "Mask modes to measure.")
flags.DEFINE_integer("batch_size", 128, "Batch size.")
flags.DEFINE_integer("steps", 0, "Steps per timed round (0: about 2 seconds' worth).")
flags.DEFINE_integer("repeats", 3, "Interleaved timed rounds per mode; the fastest is reported.")
flags.DEFINE_float("k", 0.5, "Fraction of weights kept by topk.")
flags.DEFINE_enum("jit_compile", "auto", ["auto", "true", "false"], "XLA compilation.")
flags.DEFINE_string("output", "", "Write the records as JSON here.")
flags.DEFINE_boolean("epochs", True, "Also time whole epochs through the input pipeline.")
flags.DEFINE_enum("input_pipeline", "host", ["host", "device"],
                  "Input pipeline of the epoch timing: host (NumPy) or device.")
flags.DEFINE_boolean("mixed_precision", False, "mixed_float16 (TF) / mixed_bfloat16 (JAX).")
flags.DEFINE_integer("steps_per_execution", 1, "Training steps per compiled call.")
flags.DEFINE_string("topk_method", "auto", "Exact top-k select: auto (per backend and size), "
                    "sort, radix, count or bucket (TensorFlow only).")
flags.DEFINE_boolean("fused", True, "Use the fused CPU mask kernels where available "
                     "(TensorFlow on a CPU); false: the keras.ops masks, for comparison.")
flags.DEFINE_boolean("control", True, "Also time a second dense model (mask dense_control) "
                     "in the same rounds: its ratio to dense is the machine's noise floor.")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    from tf_supermask.tools.benchmark import run_benchmark  # Keras: not for --help

    records = run_benchmark(FLAGS.models, FLAGS.masks, FLAGS.batch_size, FLAGS.steps,
                            FLAGS.repeats, FLAGS.k, FLAGS.jit_compile, epochs=FLAGS.epochs,
                            input_pipeline=FLAGS.input_pipeline,
                            mixed_precision=FLAGS.mixed_precision,
                            steps_per_execution=FLAGS.steps_per_execution,
                            topk_method=FLAGS.topk_method, fused=FLAGS.fused,
                            control=FLAGS.control, image_size=FLAGS.image_size)
    if FLAGS.output:
        os.makedirs(os.path.dirname(os.path.abspath(FLAGS.output)), exist_ok=True)
        with open(FLAGS.output, "w") as stream:
            json.dump(records, stream, indent=2)
        print(f"wrote {FLAGS.output}")


def run():
    run_main(main)


if __name__ == "__main__":
    run()
