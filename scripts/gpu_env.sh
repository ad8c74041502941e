# Sourced (not run) by scripts/gpu_batch.sh and scripts/gpu_study_window.sh, from the
# repository root: makes tf_supermask runnable on a GPU machine without `pip install -e`.
#   - an image with JAX and CUDA but no TensorFlow or Keras (no network): the wheels
#     that `bash scripts/prepare_gpu_bundle.sh` put into .whl/ are installed into $SITE
#     and the jobs run under KERAS_BACKEND=jax, the package from PYTHONPATH=$PWD;
#   - a machine where Keras imports already (tf_supermask installed, or a venv): the
#     wheels are left alone, and the package comes from PYTHONPATH=$PWD too.
# CIFAR-10 is decoded from .data/cifar10_jpeg.npz (also made by prepare_gpu_bundle.sh)
# into $DATA_DIR/cifar10.npz unless that file exists.
#
# Environment (each has a default): KERAS_BACKEND (jax), DATA_DIR (/tmp/data),
# SITE (/tmp/site), PYTHON (python3).
# Exports KERAS_BACKEND, PYTHONUNBUFFERED, PYTHONPATH, DATA_DIR and PYTHON; returns
# non-zero if the wheels do not install or Keras does not import.

export KERAS_BACKEND=${KERAS_BACKEND:-jax}
export PYTHONUNBUFFERED=1
export DATA_DIR=${DATA_DIR:-/tmp/data}
export PYTHON=${PYTHON:-python3}
SITE=${SITE:-/tmp/site}

if compgen -G ".whl/*.whl" >/dev/null && ! "$PYTHON" -c "import keras" >/dev/null 2>&1; then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$SITE" .whl/*.whl || return
  export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi

if [[ ! -f "$DATA_DIR/cifar10.npz" && -f .data/cifar10_jpeg.npz ]]; then
  echo "decoding CIFAR-10 into $DATA_DIR"
  "$PYTHON" .data/make_npz.py "$DATA_DIR" cifar10 || return
fi

echo "machine: $(nproc) CPU cores; $(nvidia-smi -L 2>/dev/null | tr '\n' ';' || echo 'no nvidia-smi')"
"$PYTHON" - <<'PYTHON' || return
import keras
print(f"python ok: keras {keras.__version__}, backend {keras.backend.backend()}")
if keras.backend.backend() == "jax":
    import jax
    print(f"jax {jax.__version__}: {jax.devices()}")
elif keras.backend.backend() == "tensorflow":
    import tensorflow as tf
    print(f"tensorflow {tf.__version__}: {tf.config.list_physical_devices('GPU')}")
PYTHON
