"""TensorBoard event files written without TensorFlow, read back with TensorFlow."""

import glob

import keras
import numpy as np
import pytest

from tf_supermask.training.events import EpochScalars, ScalarWriter, crc32c


def _read(path):
    import tensorflow as tf

    out = []
    for event in tf.compat.v1.train.summary_iterator(path):
        if event.file_version:
            out.append(("version", event.file_version))
        for value in event.summary.value:
            out.append((value.tag, event.step, value.simple_value))
    return out


def test_crc32c_known_values():
    # RFC 3720 test vectors (iSCSI): 32 zero bytes, 32 0xFF bytes, "123456789".
    assert crc32c(bytes(32)) == 0x8A9136AA
    assert crc32c(b"\xff" * 32) == 0x62A8AB43
    assert crc32c(b"123456789") == 0xE3069283


def test_scalar_writer_round_trip(tmp_path):
    writer = ScalarWriter(str(tmp_path))
    writer.scalars({"loss": 1.5, "weights_remaining/dense1/kernel": 0.25}, step=0)
    writer.scalars({"loss": -0.125}, step=2 ** 40)
    writer.close()
    events = _read(writer.path)
    assert events[0] == ("version", "brain.Event:2")
    assert events[1:] == [("loss", 0, 1.5), ("weights_remaining/dense1/kernel", 0, 0.25),
                          ("loss", 2 ** 40, -0.125)]


def test_epoch_scalars_follow_keras_tensorboard_layout(tmp_path):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer="sgd", loss="mse", metrics=["mae"])
    x, y = np.ones((8, 3), "float32"), np.zeros((8, 2), "float32")
    model.fit(x, y, validation_data=(x, y), epochs=3, verbose=0,
              callbacks=[EpochScalars(str(tmp_path))])
    train = _read(glob.glob(str(tmp_path / "train" / "events*"))[0])
    validation = _read(glob.glob(str(tmp_path / "validation" / "events*"))[0])
    assert [step for tag, step, _ in train[1:] if tag == "epoch_loss"] == [0, 1, 2]
    assert {tag for tag, *_ in validation[1:]} == {"epoch_loss", "epoch_mae"}
    final = model.evaluate(x, y, verbose=0, return_dict=True)  # what epoch 3 validated
    last_mae = [value for tag, _, value in validation[1:] if tag == "epoch_mae"][-1]
    assert last_mae == pytest.approx(final["mae"], rel=1e-5)


def test_training_without_tensorflow_still_writes_epoch_scalars(tmp_path, monkeypatch):
    from tf_supermask.training import TrainConfig, trainer

    monkeypatch.setattr(trainer, "tensorboard_available", lambda: False)  # as under JAX alone
    run_dir = tmp_path / "run"
    trainer.train(TrainConfig(model="fc", width=0.05, mask="topk", dataset="sample",
                              train_size=200, batch_size=50, epochs=2, verbose=0,
                              run_dir=str(run_dir)))
    train = _read(glob.glob(str(run_dir / "tensorboard" / "train" / "events*"))[0])
    tags = {tag for tag, *_ in train[1:]}
    assert {"epoch_loss", "epoch_accuracy", "epoch_weights_remaining"} <= tags
    assert [step for tag, step, _ in train[1:] if tag == "epoch_loss"] == [0, 1]
    # As with TensorFlow: the test set evaluated each epoch is named test_, one learning rate.
    assert {"epoch_test_accuracy", "epoch_test_loss"} <= tags
    assert not (run_dir / "tensorboard" / "validation").exists()
    assert sorted(tag for tag in tags if "learning_rate" in tag or tag.endswith("_lr")) == [
        "epoch_lr"]
