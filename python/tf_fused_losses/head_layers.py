"""`BPMLLHead`: a Keras layer that replaces the last Dense plus `BPMLLLoss`
for very many labels, training on the fused head (`head.bpmll_head_loss`),
which never holds the (batch, labels) logits.

Importing this module imports Keras (and its backend's framework). Keras
finds the class as "tf_fused_losses>BPMLLHead" once this module is imported
(`tf_fused_losses.BPMLLHead` imports it).

Training takes the labels as a second model input, so the loss is added by
the layer and the model is compiled without one:

    features = keras.Input((n_features,))
    labels = keras.Input((K,), dtype="int32")       # padded ids (-1), or
                                                    # (units,) dense labels
    hidden = keras.layers.Dense(256, activation="relu")(features)
    head = BPMLLHead(670_091, label_ids=True)
    per_row_loss = head(hidden, labels=labels)
    trainer = keras.Model([features, labels], per_row_loss)
    trainer.compile(optimizer="adam")                # no loss: the head adds it
    trainer.fit((x, label_ids), epochs=...)          # or a tf.data of ((x, ids),)

    predictor = keras.Model(features, head(hidden))  # same weights: logits,
                                                     # or the top-k ids with top_k

With labels, the layer adds the batch mean of the per-row loss
(`add_loss`; `bpmll_head_loss(..., reduction="sum_over_batch_size")`, on
label ids the head's one-pass form) and returns the per-row loss (batch,),
for monitoring, rather than the logits, which it never computes. The
per-row output carries no gradient on label ids (the added loss's gradients
are computed for the mean); train through the added loss. Keras'
sample_weight does not reach an added loss: every row weighs 1. Without labels it returns the logits, or with
`top_k` the ids of the k best labels per row, found chunk by chunk
(`top_k_scores_and_ids` gives their scores too). One tensor either way:
Keras checks a functional model's outputs against the structure of the
layer's first call, so a layer called for training (one tensor) and for
inference in two models must return one tensor in both.

Label-sharded on JAX (docs/distributed.md): under a Keras `ModelParallel`
distribution whose `LayoutMap` splits this layer's kernel along its axis 1
(the labels) over a mesh axis, e.g. `layout_map["head/kernel"] = (None,
"model")` and `layout_map["head/bias"] = ("model",)`, training runs the
label-sharded head (`bpmll_head_loss(..., mesh=, label_axis=,
batch_axis=)`): each device computes its label slice's logits and the
devices all-reduce O(batch) numbers per row, never the logits. The kernel's
width must divide by that axis's size: `pad_units_to` rounds it up.
Inference on a sharded kernel runs the unsharded code (logits, top-k), which
XLA partitions itself, gathering the kernel where it needs to.

Why two inputs rather than `fit(x, y)` with a compiled loss: a Keras loss
sees only (y_true, y_pred), so y_pred would have to be the logits (the
memory this layer exists to avoid), or the loss would read the layer's
variables from outside the model's call, which the JAX backend's stateless
training step does not allow. The labels as an input work alike on every
backend, in fit, evaluate and a custom loop, and save with the model.
"""

import keras
from keras import ops

from . import head

_KERNEL_LABEL_AXIS = 1

__all__ = ["BPMLLHead"]


@keras.saving.register_keras_serializable(package="tf_fused_losses")
class BPMLLHead(keras.layers.Layer):
    """A Dense layer of `units` labels whose training loss is BP-MLL,
    computed fused with the layer (`head.bpmll_head_loss`).

    Args:
      units: the label count.
      chunk_size: label columns per chunk (default: `bpmll_head_loss`'s,
        from a 64 MiB scratch budget).
      top_k: at inference, return the ids (int32) of the k best labels per
        row, best first, instead of the logits.
      label_ids: the labels input holds padded label ids (-1 padding)
        rather than a dense (batch, units) matrix.
      pad_units_to: an int: the kernel and bias are made round_up(units,
        pad_units_to) wide, whatever the distribution (saved files do not
        depend on it), for a kernel split along the labels over a mesh axis
        whose size must divide that width (JAX `ModelParallel`). The padding
        columns are not labels: masked out of the loss (gradient 0) and
        sliced off the logits and the top-k.
      use_bias, kernel_initializer, bias_initializer, kernel_regularizer,
        bias_regularizer: as for Dense.

    call(inputs, labels=None): with labels, adds mean-over-batch BP-MLL
    with `add_loss` and returns the per-row loss (batch,) (no gradient of
    its own on label ids); without,
    returns logits (batch, units) or, with top_k, the top-k ids
    (batch, top_k). Computes in the layer's compute dtype (mixed precision:
    the kernel is cast to it; the head accumulates in float32).
    """

    def __init__(
        self,
        units,
        chunk_size=None,
        top_k=None,
        label_ids=False,
        use_bias=True,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        kernel_regularizer=None,
        bias_regularizer=None,
        pad_units_to=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if pad_units_to is not None and (isinstance(pad_units_to, bool) or not isinstance(pad_units_to, int)
                                         or pad_units_to < 1):
            raise ValueError(f"pad_units_to must be a positive int or None; got {pad_units_to!r}")
        self.units = int(units)
        self.chunk_size = None if chunk_size is None else int(chunk_size)
        self.top_k = None if top_k is None else int(top_k)
        self.label_ids = bool(label_ids)
        self.use_bias = bool(use_bias)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        self.bias_regularizer = keras.regularizers.get(bias_regularizer)
        self.pad_units_to = None if pad_units_to is None else int(pad_units_to)
        # The kernel's and bias's columns: units, rounded up where asked.
        multiple = self.pad_units_to or 1
        self.kernel_width = -(-self.units // multiple) * multiple

    def _label_axis(self, layout, mesh):
        """The mesh axis name a variable layout splits the kernel's labels
        over, or None; raises where the kernel's width does not divide over
        it (JAX places no array unevenly)."""
        axes = getattr(layout, "axes", None)
        if axes is None or len(axes) <= _KERNEL_LABEL_AXIS or axes[_KERNEL_LABEL_AXIS] is None:
            return None
        axis = axes[_KERNEL_LABEL_AXIS]
        if not isinstance(axis, str):
            raise ValueError(
                f"BPMLLHead {self.name!r}: the layout splits the kernel's labels over {axis!r}; the label-sharded "
                "head takes one mesh axis")
        size = mesh.shape[list(mesh.axis_names).index(axis)]
        if self.kernel_width % size:
            raise ValueError(
                f"BPMLLHead {self.name!r}: units={self.units} (kernel width {self.kernel_width}) must divide over "
                f"mesh axis {axis!r} of size {size}, which the layout splits the kernel's labels over; set "
                f"pad_units_to={size} (or a multiple of it) to pad the kernel to "
                f"{-(-self.units // size) * size} columns, masked out of the loss")
        return axis

    def _model_parallel(self):
        """keras.distribution's ModelParallel distribution on the JAX
        backend, or None (other backends, other distributions)."""
        if keras.backend.backend() != "jax":
            return None
        distribution = keras.distribution.distribution()
        return distribution if isinstance(distribution, keras.distribution.ModelParallel) else None

    def build(self, inputs_shape, labels_shape=None):
        distribution = self._model_parallel()
        if distribution is not None:
            # Checked before the kernel exists: placing it would fail in JAX
            # with a message that names no argument of this layer. The
            # kernel's path is this layer's (the build's name scope) + "/kernel".
            self._label_axis(distribution.get_tensor_layout(f"{self.path}/kernel"), distribution.device_mesh)
        self.kernel = self.add_weight(
            name="kernel",
            shape=(inputs_shape[-1], self.kernel_width),
            initializer=self.kernel_initializer,
            regularizer=self.kernel_regularizer,
        )
        self.bias = None
        if self.use_bias:
            self.bias = self.add_weight(
                name="bias",
                shape=(self.kernel_width,),
                initializer=self.bias_initializer,
                regularizer=self.bias_regularizer,
            )

    def _weights_in_compute_dtype(self, padded=False):
        """(kernel, bias) in the compute dtype; without `padded`, only the
        units' columns (slicing makes the padding's gradient 0)."""
        kernel = ops.cast(self.kernel, self.compute_dtype)
        bias = None if self.bias is None else ops.cast(self.bias, self.compute_dtype)
        if self.kernel_width != self.units and not padded:
            kernel = kernel[:, : self.units]
            bias = None if bias is None else bias[: self.units]
        return kernel, bias

    def _sharded_training_options(self):
        """bpmll_head_loss's mesh, label_axis and batch_axis where a JAX
        ModelParallel distribution splits this kernel's labels, else None."""
        distribution = self._model_parallel()
        if distribution is None:
            return None
        label_axis = self._label_axis(distribution.get_variable_layout(self.kernel), distribution.device_mesh)
        if label_axis is None:
            return None
        # A batch split over the label axis itself (a one-axis mesh, whose
        # batch_dim_name defaults to that axis) is handed to the head whole.
        batch_axis = distribution.batch_dim_name
        return dict(mesh=distribution.device_mesh.backend_mesh, label_axis=label_axis,
                    batch_axis=None if batch_axis == label_axis else batch_axis)

    def call(self, inputs, labels=None):
        inputs = ops.cast(inputs, self.compute_dtype)
        if labels is None:
            if self.top_k:
                return self.top_k_scores_and_ids(inputs)[1]
            kernel, bias = self._weights_in_compute_dtype()
            logits = ops.matmul(inputs, kernel)
            return logits if bias is None else logits + bias
        # Mean over the batch (Keras' default reduction) as the head's own
        # reduction, so that on label ids it takes the one-pass form (the
        # unfused step's three GEMMs); added in float32 whatever the
        # compute dtype, as Keras adds losses. The per-row loss comes
        # from the same pass, without a gradient of its own on that form.
        sharding = self._sharded_training_options()
        # Label-sharded: the whole padded kernel, as it lives split over the
        # label axis, its padding masked out by label_count (the two-pass
        # form: per-row losses, then their mean).
        kernel, bias = self._weights_in_compute_dtype(padded=sharding is not None)
        sharded = {} if sharding is None else dict(sharding, label_count=self.units)
        loss, per_row = head.bpmll_head_loss_and_rows(
            labels,
            inputs,
            kernel,
            bias,
            label_ids=self.label_ids,
            chunk_size=self.chunk_size,
            reduction="sum_over_batch_size",
            **sharded,
        )
        self.add_loss(ops.cast(loss, "float32"))
        return per_row

    def top_k_scores_and_ids(self, inputs, k=None):
        """(scores, ids) of the k (default top_k) largest logits per row,
        (batch, k) each, best first, computed chunk by chunk."""
        kernel, bias = self._weights_in_compute_dtype()
        inputs = ops.cast(inputs, self.compute_dtype)
        return head.bpmll_head_top_k(inputs, kernel, bias, k=k or self.top_k, chunk_size=self.chunk_size)

    def compute_output_spec(self, inputs, labels=None):
        batch = inputs.shape[0]
        if labels is not None:
            return keras.KerasTensor((batch,), dtype=self.compute_dtype)
        if self.top_k:
            return keras.KerasTensor((batch, self.top_k), dtype="int32")
        return keras.KerasTensor((batch, self.units), dtype=self.compute_dtype)

    def get_config(self):
        config = super().get_config()
        config.update(
            units=self.units,
            chunk_size=self.chunk_size,
            top_k=self.top_k,
            label_ids=self.label_ids,
            pad_units_to=self.pad_units_to,
            use_bias=self.use_bias,
            kernel_initializer=keras.initializers.serialize(self.kernel_initializer),
            bias_initializer=keras.initializers.serialize(self.bias_initializer),
            kernel_regularizer=keras.regularizers.serialize(self.kernel_regularizer),
            bias_regularizer=keras.regularizers.serialize(self.bias_regularizer),
        )
        return config
