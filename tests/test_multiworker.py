"""--strategy=multi_worker: two worker processes on loopback ports train one model in lockstep."""

import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

pytest.importorskip("tensorflow")

# One worker: trains with --strategy=multi_worker, then (the chief only, once the
# other worker is done) the same run on one device as the reference. Saves the
# weights at the start and end of training, since a non-chief worker's run
# directory is deleted when its run ends.
DRIVER = r"""
import json, sys
import keras
import numpy as np
from tf_supermask.training import TrainConfig, train
from tf_supermask.training.distribute import is_chief, make_strategy, task_run_dir

run_dir, weights_prefix, reference_dir = sys.argv[1:4]


class SaveWeights(keras.callbacks.Callback):
    def __init__(self, prefix):
        super().__init__()
        self.prefix = prefix

    def on_train_begin(self, logs=None):
        np.savez(self.prefix + "_initial.npz", *self.model.get_weights())

    def on_train_end(self, logs=None):
        np.savez(self.prefix + "_final.npz", *self.model.get_weights())


def config(strategy, folder):
    # Whole epochs of 4 batches, augmented: each worker must draw the same
    # example order and the same crops to match the one-device run.
    return TrainConfig(model="fc", width=0.05, mask="topk", k=0.5,
                       init="signed_kaiming_constant", dataset="sample", train_size=128,
                       batch_size=32, epochs=2, augment=True, lr=0.1, verbose=0,
                       strategy=strategy, run_dir=folder)


results = train(config("multi_worker", run_dir), callbacks=[SaveWeights(weights_prefix)])
strategy = make_strategy("multi_worker")
out = {"test_accuracy": results["test_accuracy"], "run_dir": results["run_dir"],
       "replicas": strategy.num_replicas_in_sync, "task_run_dir": task_run_dir(strategy, run_dir)}
if is_chief(strategy):
    reference = train(config("one_device", reference_dir),
                      callbacks=[SaveWeights(reference_dir + "_weights")])
    out["reference_test_accuracy"] = reference["test_accuracy"]
print(json.dumps(out))
"""


def free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("localhost", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


def start(args, log, tmp_path, tf_config):
    """Starts a driver; its output goes to files (a full pipe would stall both workers)."""
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="2",
               KERAS_BACKEND="tensorflow", TMPDIR=str(tmp_path / "tmp"),
               TF_CONFIG=json.dumps(tf_config))
    with open(f"{log}.out", "w") as stdout, open(f"{log}.err", "w") as stderr:
        return subprocess.Popen([sys.executable, "-c", DRIVER, *args], stdout=stdout,
                                stderr=stderr, env=env)


def wait_all(processes, logs, timeout):
    deadline = time.monotonic() + timeout
    try:
        for process in processes:
            process.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        for process in processes:
            process.kill()
            process.wait()
        details = "\n".join(open(f"{log}.err").read()[-2000:] for log in logs)
        pytest.fail(f"multi-worker run did not finish in {timeout} s:\n{details}")
    for process, log in zip(processes, logs):
        assert process.returncode == 0, open(f"{log}.err").read()[-3000:]
    return [json.loads(open(f"{log}.out").read().strip().splitlines()[-1]) for log in logs]


def load(path):
    with np.load(path) as arrays:
        return [arrays[f"arr_{i}"] for i in range(len(arrays.files))]


def test_two_workers_train_like_one_device_and_only_the_chief_writes(tmp_path):
    (tmp_path / "tmp").mkdir()
    (tmp_path / "logs").mkdir()
    run_dir = str(tmp_path / "run")
    ports = free_ports(2)
    cluster = {"worker": [f"localhost:{port}" for port in ports]}
    logs = [str(tmp_path / "logs" / f"worker{index}") for index in range(2)]
    workers = [start([run_dir, str(tmp_path / f"worker{index}"), str(tmp_path / "reference")],
                     logs[index], tmp_path,
                     {"cluster": cluster, "task": {"type": "worker", "index": index}})
               for index in range(2)]
    chief, worker = wait_all(workers, logs, timeout=180)

    assert chief["replicas"] == worker["replicas"] == 2
    initial = load(tmp_path / "worker0_initial.npz")
    chief_weights = load(tmp_path / "worker0_final.npz")
    worker_weights = load(tmp_path / "worker1_final.npz")
    single_weights = load(tmp_path / "reference_weights_final.npz")
    for start_value, reference_start in zip(initial,
                                            load(tmp_path / "reference_weights_initial.npz")):
        np.testing.assert_array_equal(start_value, reference_start)
    # The all-reduce leaves both workers with the same bits.
    for chief_value, worker_value in zip(chief_weights, worker_weights):
        np.testing.assert_array_equal(chief_value, worker_value)
    # The workers fed the same global batches in the same order (a worker with
    # other batches, or an epoch out of step, would move the weights elsewhere):
    # the updates are those of one device, up to the order of sums.
    moved = max(float(np.abs(final - start_value).max())
                for final, start_value in zip(chief_weights, initial))
    assert moved > 1e-3  # the scores did train, so the comparison below means something
    for chief_value, single_value in zip(chief_weights, single_weights):
        np.testing.assert_allclose(chief_value, single_value, rtol=1e-4, atol=1e-6)
    assert chief["test_accuracy"] == worker["test_accuracy"]
    assert chief["test_accuracy"] == pytest.approx(chief["reference_test_accuracy"], abs=1e-6)

    # Only the chief wrote the run directory; the other worker's copy is gone.
    assert chief["run_dir"] == worker["run_dir"] == run_dir
    assert chief["task_run_dir"] == run_dir
    assert worker["task_run_dir"] != run_dir
    assert worker["task_run_dir"].startswith(str(tmp_path / "tmp"))
    assert not os.path.exists(worker["task_run_dir"])
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["test_accuracy"] == chief["test_accuracy"]
    assert (tmp_path / "run" / "checkpoints" / "final.keras").exists()
    assert sorted(os.listdir(tmp_path)) == sorted([
        "tmp", "logs", "run", "reference", "worker0_initial.npz", "worker0_final.npz",
        "worker1_initial.npz", "worker1_final.npz", "reference_weights_initial.npz",
        "reference_weights_final.npz"])


def test_multi_worker_needs_the_tensorflow_backend(tmp_path):
    script = ("from tf_supermask.training.distribute import make_strategy\n"
              "try:\n    make_strategy('multi_worker')\n"
              "except ValueError as error:\n    print('refused:', error)\n")
    pytest.importorskip("jax")
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            env=env, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "refused: --strategy=multi_worker needs the TensorFlow backend" in result.stdout


@pytest.mark.parametrize("binary", ["lottery", "finetune", "prune-init"])
def test_experiment_binaries_refuse_multi_worker(tmp_path, binary):
    from tf_supermask.experiments.finetune import FinetuneConfig
    from tf_supermask.experiments.prune_init import PruneInitConfig
    from tf_supermask.experiments.lottery import LotteryConfig

    config_class = {"lottery": LotteryConfig, "finetune": FinetuneConfig,
                    "prune-init": PruneInitConfig}[binary]
    with pytest.raises(ValueError, match=f"tf-supermask-train only; tf-supermask-{binary}"):
        config_class(strategy="multi_worker", run_dir=str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()
