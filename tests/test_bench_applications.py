"""tf-supermask-bench on keras.applications models: dense original vs sparsify(mask=...)."""

import pytest

from tf_supermask.tools.benchmark import check_names, input_shape_for, is_user_model, run_benchmark


def test_model_names_are_registered_models_or_a_users_model_in_the_forms_of_model():
    assert is_user_model("keras.applications.ResNet50")
    assert is_user_model("my_package.nets:small_cnn") and is_user_model("net.keras")
    assert not is_user_model("resnet20") and not is_user_model("fc")
    assert input_shape_for("keras.applications.ResNet50") == (64, 64, 3)
    assert input_shape_for("keras.applications.ResNet50", 48) == (48, 48, 3)
    assert input_shape_for("conv4") == (32, 32, 3) and input_shape_for("fc", 64) == (28, 28, 1)
    check_names(["keras.applications.MobileNetV2", "conv4"], ["dense", "topk"])
    with pytest.raises(ValueError, match="keras.applications has no model"):
        check_names(["keras.applications.ResNet51"], ["dense"])
    with pytest.raises(ValueError, match="unknown model"):
        check_names(["not_a_model"], ["dense"])


@pytest.mark.slow  # two MobileNetV3Small graphs traced and timed: a minute or two on 2 cores
def test_bench_times_a_keras_application_dense_and_sparsified():
    lines = []
    records = run_benchmark(["keras.applications.MobileNetV3Small"], ["dense", "fixed"],
                            batch_size=2, steps=1, repeats=1, epochs=False, image_size=32,
                            log=lines.append)
    assert [(r["model"], r["mask"]) for r in records] == [
        ("keras.applications.MobileNetV3Small", "dense"),
        ("keras.applications.MobileNetV3Small", "fixed")]
    assert records[0]["ratio_to_dense"] == 1.0 and records[1]["ratio_to_dense"] > 0
    assert records[1]["input_shape"] == [32, 32, 3]
    assert "MobileNetV3Small" in lines[1] and "x" in lines[1]
