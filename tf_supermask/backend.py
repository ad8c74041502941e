"""The few operations keras.ops lacks, with one branch per backend.

Everything else in layers, models and training uses ``keras.ops``.
"""

import keras
from keras import ops


def _backend():
    return keras.backend.backend()


def bitcast_to_int32(values):
    """Reinterprets float32 values as int32 (monotonic for non-negative floats)."""
    if _backend() == "tensorflow":
        import tensorflow as tf

        return tf.bitcast(ops.cast(values, "float32"), tf.int32)
    if _backend() == "jax":
        import jax

        return jax.lax.bitcast_convert_type(ops.cast(values, "float32"), "int32")
    raise NotImplementedError(f"bitcast is not implemented for the {_backend()} backend")


def histogram(ids, size, weights=None):
    """Counts of each id in [0, size) (weighted if given), of static length `size`."""
    if _backend() == "tensorflow":
        import tensorflow as tf

        return tf.math.bincount(ids, weights=weights, minlength=size, maxlength=size,
                                dtype=tf.int32)
    if _backend() == "jax":
        import jax.numpy as jnp

        return jnp.bincount(ids, weights=weights, length=size).astype("int32")
    raise NotImplementedError(f"histogram is not implemented for the {_backend()} backend")


def read(value):
    """A variable's current value as a plain tensor (autocast as usual); tensors pass through.

    ``keras.ops.convert_to_tensor`` may hand back the backend variable itself,
    which TensorFlow's custom gradients treat as a captured variable.
    """
    value = ops.convert_to_tensor(value)
    if _backend() == "tensorflow":
        import tensorflow as tf

        return tf.convert_to_tensor(value)
    return value


def compiled(function):
    """`function` compiled once per input shape under JAX (eager JAX would compile every
    op on its own), unchanged under TensorFlow; inside a traced step it is inlined."""
    if _backend() == "jax":
        import jax

        return jax.jit(function)
    return function


def compact(values, condition):
    """(values[condition], positions of those entries), in order, for 1-D inputs.

    The result's length depends on the data, so this works eagerly and in a
    TensorFlow graph but not under ``jax.jit``; callers pick another path there.
    """
    if _backend() == "tensorflow":
        import tensorflow as tf

        positions = tf.where(condition)[:, 0]
        return tf.gather(values, positions), positions
    if _backend() == "jax":
        import jax.numpy as jnp

        positions = jnp.flatnonzero(condition)
        return values[positions], positions
    raise NotImplementedError(f"compact is not implemented for the {_backend()} backend")


def tensorflow_xla():
    """Whether TensorFlow ops traced here will be compiled by XLA (``jit_compile``)."""
    if _backend() != "tensorflow":
        return False
    import tensorflow as tf

    try:
        from tensorflow.python.ops import control_flow_util
    except ImportError:  # private module moved: assume XLA when asked for it anywhere
        return bool(tf.config.optimizer.get_jit())
    return control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph())


def supports_dynamic_shapes():
    """Whether ops traced here may have data-dependent shapes (TensorFlow outside XLA)."""
    return _backend() == "tensorflow" and not tensorflow_xla()


def platform():
    """"gpu", "tpu" or "cpu": where the backend runs compiled steps by default."""
    if _backend() == "jax":
        import jax

        return jax.default_backend()
    if _backend() == "tensorflow":
        import tensorflow as tf

        return "gpu" if tf.config.list_logical_devices("GPU") else "cpu"
    return "cpu"


def gradient_function(loss_fn, variables, compile=False):
    """A function ``f(*args) -> (loss_fn(*args), [d loss / d v for v in variables])``.

    The gradients are taken with respect to the Keras variables' current
    values; ``loss_fn`` reads the variables as usual (through layers and
    ``keras.ops``), so callers never touch backend autodiff. Calls nest: a
    ``loss_fn`` may itself call ``value_and_grads`` on the same variables,
    which gives second derivatives by double backprop (GraSP's Hessian-gradient
    product). Variables a loss does not reach get zero gradients.

    Args:
      loss_fn: callable returning a scalar tensor.
      variables: the ``keras.Variable`` objects to differentiate against.
      compile: compile the function (``tf.function`` / ``jax.jit``); worth it
        when it is called on many batches of the same shape.
    """
    variables = list(variables)
    if _backend() == "tensorflow":
        import tensorflow as tf

        def call(*args):
            values = [variable.value for variable in variables]
            with tf.GradientTape(watch_accessed_variables=False) as tape:
                tape.watch(values)
                loss = loss_fn(*args)
            grads = tape.gradient(loss, values,
                                  unconnected_gradients=tf.UnconnectedGradients.ZERO)
            return loss, list(grads)

        return tf.function(call, reduce_retracing=True) if compile else call
    if _backend() == "jax":
        import jax

        def pure(values, *args):
            # The variables read the traced values instead of their own state.
            with keras.StatelessScope(state_mapping=list(zip(variables, values))):
                return loss_fn(*args)

        value_and_grad = jax.value_and_grad(pure)
        if compile:
            value_and_grad = jax.jit(value_and_grad)

        def call(*args):
            loss, grads = value_and_grad([variable.value for variable in variables], *args)
            return loss, list(grads)

        return call
    raise NotImplementedError(f"gradients are not implemented for the {_backend()} backend")


def value_and_grads(loss_fn, variables, *args):
    """``(loss_fn(*args), gradients)`` with respect to ``variables``; see ``gradient_function``."""
    return gradient_function(loss_fn, variables)(*args)
