"""Optimizer, schedule and score-init rules against the reference implementations.

Each reference rule is computed by hand in NumPy: PyTorch's ``weight_decay``
(an L2 term added to the gradient before momentum / Adam's moments), as used by
hidden-networks, open_lth and Liu et al.; PyTorch's SGD momentum under a
changing learning rate (``buf = m * buf + g``, ``p -= lr_t * buf``);
hidden-networks' per-epoch cosine learning rate and per-epoch warm-up; and its
score init, ``kaiming_uniform_(a=sqrt(5))``.
"""

import json
import math
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from tf_supermask.layers.initializers import compute_fans, get_initializer
from tf_supermask.training import TrainConfig
from tf_supermask.training.optim import (EpochCosineDecay, L2PyTorchSGD, L2SGD, PyTorchSGD,
                                         WarmupSchedule, build_optimizer, learning_rate)

P0 = np.array([[0.5, -1.0, 2.0], [0.25, -0.75, 1.5]], "float32")
GRADS = [np.array([[0.1, -0.2, 0.3], [0.0, 0.5, -0.4]], "float32"),
         np.array([[-0.3, 0.1, 0.2], [0.6, -0.1, 0.05]], "float32"),
         np.array([[0.2, 0.2, -0.5], [-0.2, 0.3, 0.1]], "float32"),
         np.array([[0.4, -0.1, 0.1], [0.3, 0.2, -0.6]], "float32")]
LR, MU, WD = 0.1, 0.9, 1e-2
# hidden-networks' cosine set once per epoch, one step per epoch over 4 epochs:
# 0.1, 0.0854, 0.05, 0.0146 (a changing rate, where the momentum rules part).
CHANGING = dict(lr_schedule="cosine_epoch", epochs=len(GRADS))
CHANGING_LRS = [0.5 * (1 + math.cos(math.pi * e / len(GRADS))) * LR for e in range(len(GRADS))]


def torch_sgd(nesterov, wd=WD, lrs=None):
    """torch.optim.SGD(lr_t, momentum=MU, weight_decay=wd, nesterov=...), dampening 0:
    buf = MU * buf + g (buf = g at the first step), p -= lr_t * buf (Nesterov:
    p -= lr_t * (g + MU * buf)), with the rate of each step from `lrs`."""
    p, buf = P0.astype("float64"), None
    for g, lr in zip(GRADS, lrs or [LR] * len(GRADS)):
        g = g + wd * p
        buf = g if buf is None else MU * buf + g
        p = p - lr * (g + MU * buf if nesterov else buf)
    return p


def keras_l2_sgd(nesterov, wd=WD, lrs=None):
    """Keras's momentum rule with the L2 term: v = MU * v - lr_t * g, p += v
    (Nesterov: p += MU * v - lr_t * g)."""
    p, velocity = P0.astype("float64"), 0.0
    for g, lr in zip(GRADS, lrs or [LR] * len(GRADS)):
        g = g + wd * p
        velocity = MU * velocity - lr * g
        p = p + (MU * velocity - lr * g if nesterov else velocity)
    return p


def torch_adam(wd=WD, lr=1e-2, b1=0.9, b2=0.999, eps=1e-7):
    """torch.optim.Adam(lr, weight_decay=wd): the L2 term joins the gradient.

    One difference that is Keras's, not ours: Keras adds epsilon to sqrt(v) before
    the bias correction (torch after it), so torch's eps is Keras's / sqrt(1 - b2^t).
    """
    p, m, v = P0.astype("float64"), 0.0, 0.0
    for t, g in enumerate(GRADS, start=1):
        g = g + wd * p
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        torch_eps = eps / math.sqrt(1 - b2 ** t)
        p = p - lr / (1 - b1 ** t) * m / (np.sqrt(v) / math.sqrt(1 - b2 ** t) + torch_eps)
    return p


def keras_decoupled_sgd(nesterov, wd=WD):
    """Keras SGD(weight_decay=wd): p -= lr * wd * p, then the momentum step on g."""
    p, velocity = P0.astype("float64"), 0.0
    for g in GRADS:
        p = p - LR * wd * p
        velocity = MU * velocity - LR * g
        p = p + (MU * velocity - LR * g if nesterov else velocity)
    return p


def _optimizer(steps_per_epoch=10, **overrides):
    fields = dict(optimizer="sgd", lr=LR, momentum=MU, weight_decay=WD)
    fields.update(overrides)
    return build_optimizer(TrainConfig(**fields), steps_per_epoch=steps_per_epoch)


def _run(optimizer, steps=GRADS):
    variable = keras.Variable(P0)
    for g in steps:
        optimizer.apply([keras.ops.convert_to_tensor(g)], [variable])
    return np.array(variable)


@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_weight_decay_is_pytorch_l2_before_momentum(nesterov):
    optimizer = _optimizer(nesterov=nesterov)
    assert isinstance(optimizer, L2PyTorchSGD)
    np.testing.assert_allclose(_run(optimizer), torch_sgd(nesterov), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("wd", [WD, 0.0])
@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_momentum_follows_pytorch_under_a_changing_rate(nesterov, wd):
    """The default rule: 4 steps at 0.1, 0.085, 0.05, 0.015 match torch.optim.SGD."""
    optimizer = _optimizer(steps_per_epoch=1, nesterov=nesterov, weight_decay=wd, **CHANGING)
    assert isinstance(optimizer, PyTorchSGD)
    result = _run(optimizer)
    np.testing.assert_allclose(result, torch_sgd(nesterov, wd, CHANGING_LRS),
                               rtol=1e-6, atol=1e-7)
    # Keras's rule parts from it once the rate changes (the old behaviour).
    assert np.max(np.abs(keras_l2_sgd(nesterov, wd, CHANGING_LRS)
                         - torch_sgd(nesterov, wd, CHANGING_LRS))) > 1e-3


@pytest.mark.parametrize("nesterov", [False, True])
def test_keras_momentum_rule_is_a_named_choice(nesterov):
    optimizer = _optimizer(steps_per_epoch=1, nesterov=nesterov, momentum_rule="keras",
                           **CHANGING)
    assert isinstance(optimizer, L2SGD) and not isinstance(optimizer, PyTorchSGD)
    np.testing.assert_allclose(_run(optimizer), keras_l2_sgd(nesterov, WD, CHANGING_LRS),
                               rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="momentum_rule"):
        TrainConfig(momentum_rule="torch")


@pytest.mark.parametrize("nesterov", [False, True])
def test_sgd_l2_inside_an_xla_compiled_step(nesterov):
    import tensorflow as tf

    optimizer = _optimizer(steps_per_epoch=1, nesterov=nesterov, **CHANGING)
    variable = keras.Variable(P0)
    optimizer.build([variable])

    @tf.function(jit_compile=True)
    def step(g):
        optimizer.apply([g], [variable])

    for g in GRADS:
        step(tf.constant(g))
    np.testing.assert_allclose(np.array(variable), torch_sgd(nesterov, WD, CHANGING_LRS),
                               rtol=1e-6, atol=1e-7)


def test_adam_weight_decay_is_pytorch_l2():
    optimizer = _optimizer(optimizer="adam", lr=1e-2)
    assert type(optimizer).__name__ == "L2Adam"
    np.testing.assert_allclose(_run(optimizer), torch_adam(), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("nesterov", [False, True])
def test_decoupled_mode_is_keras_rule_and_differs_from_l2(nesterov):
    optimizer = _optimizer(nesterov=nesterov, weight_decay_mode="decoupled")
    assert type(optimizer) is PyTorchSGD  # momentum rules agree at a constant rate
    result = _run(optimizer)
    np.testing.assert_allclose(result, keras_decoupled_sgd(nesterov), rtol=1e-6, atol=1e-7)
    # The old default: measurably different from PyTorch's rule.
    assert np.max(np.abs(result - torch_sgd(nesterov))) > 1e-4


def test_weight_decay_mode_defaults_and_adamw():
    assert isinstance(_optimizer(), L2PyTorchSGD)
    assert type(_optimizer(optimizer="rmsprop")).__name__ == "L2RMSprop"
    assert type(_optimizer(optimizer="adamw")) is keras.optimizers.AdamW
    assert type(_optimizer(weight_decay=0.0)) is PyTorchSGD
    assert type(_optimizer(weight_decay=0.0, momentum_rule="keras")) is keras.optimizers.SGD
    with pytest.raises(ValueError, match="adamw"):
        TrainConfig(optimizer="adamw", weight_decay=1e-2, weight_decay_mode="l2")


def test_l2_optimizer_round_trips_through_keras_files(tmp_path):
    """Same variables as Keras SGD; .keras and .weights.h5 (BackupAndRestore) restore it."""
    def model():
        inputs = keras.Input((4,))
        return keras.Model(inputs, keras.layers.Dense(3)(inputs))

    x = np.random.default_rng(0).normal(size=(32, 4)).astype("float32")
    y = np.random.default_rng(1).integers(0, 3, size=32)
    trained = model()
    trained.compile(optimizer=_optimizer(nesterov=True), jit_compile=True,
                    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    trained.fit(x, y, batch_size=8, epochs=1, verbose=0)
    plain = keras.optimizers.SGD(LR, momentum=MU)
    plain.build(trained.trainable_variables)
    assert ([tuple(v.shape) for v in trained.optimizer.variables]
            == [tuple(v.shape) for v in plain.variables])

    trained.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert isinstance(loaded.optimizer, L2PyTorchSGD)
    assert loaded.optimizer.weight_decay == pytest.approx(WD) and loaded.optimizer.nesterov
    for a, b in zip(trained.optimizer.variables, loaded.optimizer.variables):
        np.testing.assert_array_equal(np.array(a), np.array(b))

    trained.save_weights(tmp_path / "m.weights.h5")
    resumed = model()
    resumed.compile(optimizer=_optimizer(nesterov=True),
                    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    resumed.optimizer.build(resumed.trainable_variables)
    resumed.load_weights(tmp_path / "m.weights.h5")
    for a, b in zip(trained.optimizer.variables, resumed.optimizer.variables):
        np.testing.assert_array_equal(np.array(a), np.array(b))


def hidden_networks_cosine(epoch, epochs, lr, warmup=0):
    """hidden-networks' cosine_lr, for the epochs after the warm-up."""
    e, es = epoch - warmup, epochs - warmup
    return 0.5 * (1 + math.cos(math.pi * e / es)) * lr


def test_cosine_epoch_schedule_is_set_once_per_epoch():
    spe, epochs = 7, 10
    rate = learning_rate(TrainConfig(lr=0.1, lr_schedule="cosine_epoch", epochs=epochs), spe)
    assert isinstance(rate, EpochCosineDecay)
    restored = keras.optimizers.schedules.deserialize(keras.optimizers.schedules.serialize(rate))
    for step in [0, 1, 6, 7, 13, 35, 62, 63, 69]:
        expected = hidden_networks_cosine(step // spe, epochs, 0.1)
        assert float(rate(step)) == pytest.approx(expected, rel=1e-6, abs=1e-8), step
        assert float(restored(step)) == pytest.approx(expected, rel=1e-6, abs=1e-8), step
    # Per step, the old cosine moves inside an epoch; this one does not.
    assert float(rate(1)) == float(rate(6)) == pytest.approx(0.1)


def test_cosine_epoch_after_warmup():
    """hidden-networks' _warmup_lr: base * (e + 1) / W held through warm-up epoch e."""
    spe, epochs, warmup = 5, 8, 2
    rate = learning_rate(TrainConfig(lr=0.2, lr_schedule="cosine_epoch", epochs=epochs,
                                     warmup_epochs=warmup), spe)
    assert isinstance(rate, WarmupSchedule)
    restored = keras.optimizers.schedules.deserialize(keras.optimizers.schedules.serialize(rate))
    for step in [0, 1, 4, 5, 9]:
        expected = 0.2 * (step // spe + 1) / warmup
        assert float(rate(step)) == pytest.approx(expected, rel=1e-6), step
        assert float(restored(step)) == pytest.approx(expected, rel=1e-6), step
    for step in [10, 14, 15, 27, 39]:
        expected = hidden_networks_cosine(step // spe, epochs, 0.2, warmup)
        assert float(rate(step)) == pytest.approx(expected, rel=1e-6, abs=1e-8), step


def test_warmup_of_other_schedules_rises_every_step():
    spe, warmup = 5, 2
    rate = learning_rate(TrainConfig(lr=0.2, lr_schedule="cosine", epochs=8,
                                     warmup_epochs=warmup), spe)
    for step in [0, 4, 9]:
        assert float(rate(step)) == pytest.approx(0.2 * (step + 1) / (warmup * spe), rel=1e-6)


@pytest.mark.parametrize("shape", [(784, 300), (3, 3, 16, 32)])
def test_kaiming_uniform_a_sqrt5_limits(shape):
    fan_in = int(np.prod(shape[:-1]))  # dense: inputs; conv: kh * kw * c_in
    assert compute_fans(shape)[0] == fan_in
    bound = 1.0 / math.sqrt(fan_in)  # torch: gain sqrt(2 / (1 + 5)) * sqrt(3 / fan_in)
    values = np.array(get_initializer("kaiming_uniform_a_sqrt5", seed=3)(shape))
    assert np.abs(values).max() <= bound * (1 + 1e-6)
    assert np.abs(values).max() > 0.99 * bound
    assert values.min() < -0.99 * bound
    old = np.array(get_initializer("kaiming_uniform", seed=3)(shape))
    assert np.abs(old).max() > 2.4 * bound  # sqrt(6 / fan_in): kept by its name


def test_topk_scores_default_to_the_reference_init():
    from tf_supermask.layers import masked_layers
    from tf_supermask.models import build_model

    for options, bound_of in [(TrainConfig(mask="topk").mask_options(), lambda n: 1 / math.sqrt(n)),
                              (TrainConfig(mask="topk", score_init="kaiming_uniform").mask_options(),
                               lambda n: math.sqrt(6 / n))]:
        model = build_model("fc", (28, 28, 1), 10, options)
        for layer in masked_layers(model):
            scores = np.array(layer.scores)
            bound = bound_of(scores.shape[0])
            assert bound * 0.99 < np.abs(scores).max() <= bound * (1 + 1e-6), layer.name


JAX_SCRIPT = r"""
import json
import jax
import keras
import numpy as np
assert keras.backend.backend() == "jax"
from tf_supermask.training import TrainConfig
from tf_supermask.training.optim import build_optimizer

P0, GRADS = np.array(json.loads(__import__("sys").argv[1]), "float32"), [
    np.array(g, "float32") for g in json.loads(__import__("sys").argv[2])]
out = {}
changing = dict(lr_schedule="cosine_epoch", epochs=len(GRADS))
for name, fields in [("sgd", dict(nesterov=False)), ("nesterov", dict(nesterov=True)),
                     ("adam", dict(optimizer="adam", lr=1e-2)),
                     ("sgd_changing", dict(nesterov=False, **changing)),
                     ("nesterov_changing", dict(nesterov=True, **changing)),
                     ("keras_changing", dict(momentum_rule="keras", **changing))]:
    base = dict(optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=1e-2)
    base.update(fields)
    optimizer = build_optimizer(TrainConfig(**base),
                                steps_per_epoch=1 if "changing" in name else 10)
    variable = keras.Variable(P0)
    optimizer.build([variable])
    # A compiled, stateless step, as JAX's train step applies the optimizer.
    step = jax.jit(lambda opt_vars, g, p: optimizer.stateless_apply(opt_vars, [g], [p]))
    opt_vars, params = [v.value for v in optimizer.variables], [variable.value]
    for g in GRADS:
        params, opt_vars = step(opt_vars, g, params[0])
    out[name] = np.asarray(params[0]).tolist()
print(json.dumps(out))
"""


def test_l2_weight_decay_and_momentum_rules_under_jax():
    pytest.importorskip("jax")
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    result = subprocess.run([sys.executable, "-c", JAX_SCRIPT, json.dumps(P0.tolist()),
                             json.dumps([g.tolist() for g in GRADS])],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    np.testing.assert_allclose(out["sgd"], torch_sgd(False), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(out["nesterov"], torch_sgd(True), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(out["adam"], torch_adam(), rtol=1e-6, atol=1e-7)
    for name, nesterov in [("sgd_changing", False), ("nesterov_changing", True)]:
        np.testing.assert_allclose(out[name], torch_sgd(nesterov, WD, CHANGING_LRS),
                                   rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(out["keras_changing"], keras_l2_sgd(False, WD, CHANGING_LRS),
                               rtol=1e-6, atol=1e-7)


class _StopAfterEpoch(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        if epoch == 0:
            raise KeyboardInterrupt("killed")


def test_l2_run_resumes_to_the_uninterrupted_result(tmp_path):
    """BackupAndRestore brings back L2SGD's momentum and the per-epoch cosine step."""
    from tf_supermask.training import train

    def config(name):
        return TrainConfig(model="fc", width=0.25, mask="topk", k=0.3,
                           init="signed_kaiming_constant", dataset="sample", train_size=128,
                           batch_size=64, epochs=2, lr=0.1, lr_schedule="cosine_epoch",
                           weight_decay=1e-3, verbose=0, run_dir=str(tmp_path / name))

    train(config("whole"))
    with pytest.raises(KeyboardInterrupt):
        train(config("resumed"), callbacks=[_StopAfterEpoch()])
    assert train(config("resumed"))["resumed"]
    whole = keras.saving.load_model(tmp_path / "whole" / "checkpoints" / "final.keras")
    resumed = keras.saving.load_model(tmp_path / "resumed" / "checkpoints" / "final.keras")
    assert isinstance(resumed.optimizer, L2PyTorchSGD)
    for a, b in zip(whole.weights + whole.optimizer.variables,
                    resumed.weights + resumed.optimizer.variables):
        np.testing.assert_allclose(np.array(a), np.array(b), rtol=1e-5, atol=1e-6)


MIRRORED_SCRIPT = r"""
import json, sys
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
import numpy as np
from tf_supermask.training import TrainConfig
from tf_supermask.training.optim import build_optimizer

P0 = np.array(json.loads(sys.argv[1]), "float32")
GRADS = [np.array(g, "float32") for g in json.loads(sys.argv[2])]
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
with strategy.scope():
    variable = keras.Variable(P0)
    optimizer = build_optimizer(TrainConfig(lr=0.1, momentum=0.9, weight_decay=1e-2), 10)
    optimizer.build([variable])


@tf.function
def step(g):
    # Each replica holds half the gradient; the optimizer sums them across replicas.
    strategy.run(lambda: optimizer.apply([g / 2.0], [variable]))


for g in GRADS:
    step(g)
print(json.dumps({"replicas": strategy.num_replicas_in_sync,
                  "p": np.asarray(variable.value).tolist()}))
"""


def test_l2_term_is_added_once_under_a_mirrored_strategy():
    result = subprocess.run([sys.executable, "-c", MIRRORED_SCRIPT, json.dumps(P0.tolist()),
                             json.dumps([g.tolist() for g in GRADS])],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["replicas"] == 2
    np.testing.assert_allclose(out["p"], torch_sgd(False), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("rule,expected", [("kept", 0.1076), ("pruned", 0.0704),
                                           ("none", 0.0589)])
def test_scale_fan_rules_paper_and_code(rule, expected):
    """k = 0.3, fan 3 x 3 x 64 = 576, signed Kaiming constant: the edge-popup paper's
    sqrt(2 / (k fan)) ("kept"), hidden-networks' code sqrt(2 / ((1 - k) fan))
    ("pruned", its prune_rate being the fraction kept), or no scaling."""
    from tf_supermask.models import MaskOptions

    k, fan = 0.3, 3 * 3 * 64
    by_hand = {"kept": math.sqrt(2 / (k * fan)), "pruned": math.sqrt(2 / ((1 - k) * fan)),
               "none": math.sqrt(2 / fan)}[rule]
    assert by_hand == pytest.approx(expected, abs=5e-5)
    options = TrainConfig(mask="topk", k=k, init="signed_kaiming_constant",
                          scale_fan=rule).mask_options()
    layer = options.conv(8)
    layer.build((None, 8, 8, 64))
    values = np.abs(np.array(layer.kernel_variable))
    np.testing.assert_allclose(values, by_hand, rtol=1e-6)


def test_scale_fan_checks_and_legacy_values():
    from tf_supermask.models import MaskOptions

    with pytest.raises(ValueError, match="scale_fan"):
        TrainConfig(scale_fan="k")
    with pytest.raises(ValueError, match="k = 1"):
        MaskOptions(mask="topk", k=1.0, scale_fan="pruned")
    # Compact files written when the option was a bool still load as the old rule.
    assert MaskOptions(scale_fan=True).scale_fan == "kept"
    assert MaskOptions(scale_fan=False).scale_fan == "none"
