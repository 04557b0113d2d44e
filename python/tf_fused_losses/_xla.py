"""Whether the code being traced will be compiled by XLA.

Custom ops have no XLA kernels, so inside `jit_compile=True` functions (and
Keras models compiled with jit_compile) the public functions switch to their
pure-TF equivalents, which XLA fuses well.
"""

import tensorflow as tf
from tensorflow.python.framework import ops as tf_ops
from tensorflow.python.ops import control_flow_util


@tf.autograph.experimental.do_not_convert
def in_xla_context():
    if tf.executing_eagerly():
        return False
    return bool(control_flow_util.GraphOrParentsInXlaContext(tf_ops.get_default_graph()))
