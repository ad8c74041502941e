"""tf_supermask: supermasks and lottery tickets in Keras 3.

Subpackages: ``layers`` (masked layers, mask modes, initializers), ``models``
(registered networks), ``data`` (datasets and input pipelines), ``training``
(configuration, run directories, the training loop), ``bin`` (absl binaries).
"""

__version__ = "0.1.0"
