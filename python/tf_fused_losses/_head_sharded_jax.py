"""The fused linear BP-MLL head with its kernel sharded along the labels over
an axis of a `jax.sharding.Mesh` (issue 22, part 2), optionally with the
batch sharded over another axis.

Each device holds a slice of the labels (its columns of the kernel and the
bias, and of dense labels) and runs `_head_jax`'s chunked algorithm on that
slice only: its rows' max-shifted partial sums log A = log sum_pos e^{-c}
and log N = log sum_neg e^{c}, the label counts and the NaN flags. The
devices of the label axis then combine O(batch) numbers (a pmax of the two
log sums, then one psum of the shifted sums, the counts and the flags), and
every device finishes the per-row loss from the global sums. The backward
recomputes each chunk's logits from the global statistics (Cut
Cross-Entropy's recompute, as `_head_jax`), writes its slice of the kernel's
and bias's gradients, which stay sharded, and psums the hidden gradient
(batch, d) over the label axis, as Renee does. Nothing of size
batch x labels crosses a device.

With the batch also sharded (a `batch_axis`), each device runs its rows of
its label slice; the kernel's and bias's gradients of its slice are summed
over the batch axis (the data-parallel weight gradient, d x labels/shards).

Label ids are kept replicated over the label axis (they are (batch, K), K
small): every device sorts its rows' ids, finds the bad ones and the
positive count over all labels, and keeps the ids in its own range
[offset, offset + shard) - the ids are routed to the shard that owns them.

A label count not divisible by the label axis's size is padded: the kernel,
bias and dense labels get zero columns up to the next multiple, and the
columns from `label_count` on are masked out (neither positive nor negative,
never NaN, gradient exactly 0). For a kernel that lives sharded, make it
that wide from the start and pass `label_count`: JAX cannot place an array
unevenly over a mesh axis.

The numerics and the NaN/inf rule are `_head_jax`'s (docs/semantics.md).
"""

import functools
from typing import NamedTuple

import numpy as np

import jax
import jax.numpy as jnp
from jax import lax
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from ._head_jax import (
    _chunk_dlogits,
    _chunk_logits,
    _chunks,
    _divide_no_nan,
    _exp_extended,
    _labels_valid,
    _logaddexp,
    _prepare_ids,
    _row_logsumexp,
    _terms,
    _weights_and_divisor,
)
from ._head_validation import check_head_arguments, check_reduction, chunk_width
from ._jax_ops import _as_array

__all__ = ["bpmll_head_loss_label_sharded", "bpmll_head_loss_and_rows_label_sharded"]


class _Layout(NamedTuple):
    """The static description of one sharded head call (a custom_vjp
    non-differentiable argument, so hashable)."""

    mesh: Mesh
    label_axis: str
    batch_axis: str | None
    label_ids: bool
    label_count: int  # the real labels; the kernel's columns from here on are padding
    shard_width: int  # kernel columns per device
    chunk: int

    @property
    def padded(self):
        return self.label_count < self.shard_width * self.mesh.shape[self.label_axis]

    def specs(self):
        """(labels, hidden, kernel, bias, per-row) partition specs."""
        rows = self.batch_axis
        labels = P(rows, None) if self.label_ids else P(rows, self.label_axis)
        return labels, P(rows, None), P(None, self.label_axis), P(self.label_axis), P(rows)

    def shard_map(self, body, in_specs, out_specs):
        # check_vma off: the loops' carries mix values that vary over the
        # label axis with ones that do not; the out_specs state what the
        # collectives make replicated.
        return jax.shard_map(body, mesh=self.mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False)


def _offset(layout):
    """The first global label column of this device's slice."""
    return lax.axis_index(layout.label_axis) * layout.shard_width


def _real_columns(layout, offset, start, width):
    """(width,) which of the chunk's columns are labels rather than padding."""
    return offset + start + jnp.arange(width) < layout.label_count


def _local_labels(layout, labels, offset, acc):
    """(chunk labels for `_terms`, positives per row or None, rows with a bad
    id or None): dense labels as they come; ids sorted and checked over all
    labels, then kept only where this device owns them, made local to its
    slice."""
    if not layout.label_ids:
        return labels, None, None
    ids, valid, bad_rows, pos_count = _prepare_ids(labels, layout.label_count, acc)
    local = ids - offset
    owned = valid & (local >= 0) & (local < layout.shard_width)
    return (jnp.where(owned, local, 0), owned), pos_count, bad_rows


def _local_sums(layout, chunk_labels, hidden, kernel, bias, offset, acc):
    """This device's (log A, log N, positive count, negative count, NaN row)
    over its label slice, each (rows,)."""
    batch = hidden.shape[0]

    def step(start, width, carry):
        log_p, log_n, pos_count, neg_count, nan_row = carry
        _, c = _chunk_logits(hidden, kernel, bias, start, width, acc)
        _, _, log_pos, log_neg, raw = _terms(chunk_labels, layout.label_ids, start, width, c)
        nan_logit = jnp.isnan(c)
        if layout.padded:
            real = _real_columns(layout, offset, start, width)
            log_pos = jnp.where(real, log_pos, -jnp.inf)
            log_neg = jnp.where(real, log_neg, -jnp.inf)
            nan_logit = nan_logit & real
            if raw is not None:
                raw = jnp.where(real, raw, jnp.zeros((), raw.dtype))
        nan_row = nan_row | jnp.any(nan_logit, axis=1)
        if raw is not None:
            y = raw.astype(acc)
            pos_count = pos_count + jnp.sum(y, axis=1)
            negative_weight = 1 - y
            if layout.padded:
                negative_weight = jnp.where(real, negative_weight, 0)
            neg_count = neg_count + jnp.sum(negative_weight, axis=1)
            nan_row = nan_row | ~_labels_valid(raw)
        return (_logaddexp(log_p, _row_logsumexp(log_pos)), _logaddexp(log_n, _row_logsumexp(log_neg)),
                pos_count, neg_count, nan_row)

    neg_inf = jnp.full((batch,), -jnp.inf, acc)
    zeros = jnp.zeros((batch,), acc)
    return _chunks(layout.chunk, layout.shard_width, step, (neg_inf, neg_inf, zeros, zeros, jnp.zeros((batch,), bool)))


def _combine_log_sums(log_sums, axis):
    """log sum over the devices of `axis` of e^{log_sums} (k, rows), in
    extended arithmetic: each device's sums shifted by the global maximum
    (a pmax), summed (a psum); +inf or NaN where the maximum is."""
    top = lax.pmax(log_sums, axis)
    finite = jnp.isfinite(top)
    shift = jnp.where(finite, top, 0)
    total = lax.psum(_exp_extended(log_sums - shift), axis)
    return jnp.where(finite, shift + jnp.log(total), top)


def _finish(log_p, log_n, pos_count, neg_count, nan_row, acc):
    """The per-row loss and the backward's statistics from the global sums
    (`_head_jax._forward`'s last step)."""
    has_pairs = (pos_count > 0) & (neg_count > 0)
    log_pairs = jnp.log(jnp.where(has_pairs, pos_count, 1)) + jnp.log(jnp.where(has_pairs, neg_count, 1))
    log_loss = log_p + log_n - log_pairs
    keep = has_pairs & ~nan_row
    log_max = float(np.log(jnp.finfo(acc).max)) - 1
    regular = jnp.isfinite(log_p) & jnp.isfinite(log_n) & (log_loss < log_max)
    row_value = jnp.where(nan_row, jnp.nan, 0).astype(acc)
    loss = jnp.where(keep, _exp_extended(log_loss), row_value)
    return loss, (log_p - log_pairs, log_n - log_pairs, keep, keep & ~regular, row_value)


def _accumulation_dtype(compute):
    return jnp.float64 if compute == jnp.float64 else jnp.float32


def _sharded_forward(layout, labels, hidden, kernel, bias):
    """(loss (batch,), statistics): per-row, sharded like the batch and
    replicated over the label axis."""
    acc = _accumulation_dtype(kernel.dtype)
    label_spec, hidden_spec, kernel_spec, bias_spec, row_spec = layout.specs()

    def body(labels, hidden, kernel, bias):
        offset = _offset(layout)
        chunk_labels, id_pos_count, bad_rows = _local_labels(layout, labels, offset, acc)
        log_p, log_n, pos_count, neg_count, nan_row = _local_sums(layout, chunk_labels, hidden, kernel, bias, offset, acc)
        log_p, log_n = _combine_log_sums(jnp.stack([log_p, log_n]), layout.label_axis)
        if layout.label_ids:
            nan_count = lax.psum(nan_row.astype(acc), layout.label_axis)
            pos_count = id_pos_count
            neg_count = layout.label_count - pos_count
            nan_row = (nan_count > 0) | bad_rows
        else:
            pos_count, neg_count, nan_count = lax.psum(
                jnp.stack([pos_count, neg_count, nan_row.astype(acc)]), layout.label_axis)
            nan_row = nan_count > 0
        loss, statistics = _finish(log_p, log_n, pos_count, neg_count, nan_row, acc)
        return loss.astype(kernel.dtype), statistics

    return layout.shard_map(body, (label_spec, hidden_spec, kernel_spec, bias_spec), (row_spec, (row_spec,) * 5))(
        labels, hidden, kernel, bias)


def _sharded_backward(layout, labels, hidden, kernel, bias, statistics, upstream):
    """(d hidden, d kernel, d bias): the hidden gradient psummed over the
    label axis; the kernel's and bias's label-sharded, summed over the batch
    axis where there is one."""
    compute = kernel.dtype
    acc = statistics[0].dtype
    label_spec, hidden_spec, kernel_spec, bias_spec, row_spec = layout.specs()

    def body(labels, hidden, kernel, bias, statistics, upstream):
        offset = _offset(layout)
        chunk_labels, _, _ = _local_labels(layout, labels, offset, acc)
        upstream = upstream.astype(acc)

        def step(start, width, carry):
            dhidden, dkernel, dbias = carry
            kernel_chunk, c = _chunk_logits(hidden, kernel, bias, start, width, acc)
            dlogits = _chunk_dlogits(chunk_labels, layout.label_ids, statistics, start, width, c, upstream)
            if layout.padded:
                dlogits = jnp.where(_real_columns(layout, offset, start, width), dlogits, 0)
            dlogits_compute = dlogits.astype(compute)
            dhidden = dhidden + (dlogits_compute @ kernel_chunk.T).astype(acc)
            dkernel = lax.dynamic_update_slice_in_dim(dkernel, hidden.T @ dlogits_compute, start, axis=1)
            dbias = lax.dynamic_update_slice_in_dim(dbias, jnp.sum(dlogits, axis=0).astype(bias.dtype), start, axis=0)
            return dhidden, dkernel, dbias

        carry = (jnp.zeros(hidden.shape, acc), jnp.zeros_like(kernel), jnp.zeros_like(bias))
        dhidden, dkernel, dbias = _chunks(layout.chunk, layout.shard_width, step, carry)
        # The hidden gradient sums every label slice's part: (rows, d).
        dhidden = lax.psum(dhidden, layout.label_axis)
        if layout.batch_axis is not None:
            # The weights' gradient sums every row shard's part.
            dkernel, dbias = lax.psum((dkernel, dbias), layout.batch_axis)
        return dhidden.astype(hidden.dtype), dkernel, dbias

    in_specs = (label_spec, hidden_spec, kernel_spec, bias_spec, (row_spec,) * 5, row_spec)
    return layout.shard_map(body, in_specs, (hidden_spec, kernel_spec, bias_spec))(
        labels, hidden, kernel, bias, statistics, upstream)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _sharded_head(layout, labels, hidden, kernel, bias):
    return _sharded_forward(layout, labels, hidden, kernel, bias)[0]


def _sharded_head_fwd(layout, labels, hidden, kernel, bias):
    loss, statistics = _sharded_forward(layout, labels, hidden, kernel, bias)
    return loss, (labels, hidden, kernel, bias, statistics)


def _sharded_head_bwd(layout, residuals, upstream):
    labels, hidden, kernel, bias, statistics = residuals
    # Labels are constants: no cotangent.
    return (None, *_sharded_backward(layout, labels, hidden, kernel, bias, statistics, upstream))


_sharded_head.defvjp(_sharded_head_fwd, _sharded_head_bwd)


def _axis_size(mesh, name, role):
    if name not in mesh.axis_names:
        raise ValueError(f"{role} {name!r} is not an axis of the mesh; its axes are {mesh.axis_names}")
    return mesh.shape[name]


def bpmll_head_loss_label_sharded(
    labels,
    hidden,
    kernel,
    bias=None,
    *,
    mesh,
    label_axis,
    batch_axis=None,
    label_ids=False,
    label_count=None,
    chunk_size=None,
):
    """Per-row BP-MLL loss (batch,) of hidden @ kernel + bias against labels,
    with the kernel (d, labels), the bias and dense labels sharded along the
    labels over `label_axis` of `mesh`, and the rows over `batch_axis` where
    given; equal to `head.bpmll_head_loss` (same arguments, same rules), with
    no collective of size batch x labels.

    Args:
      mesh: a `jax.sharding.Mesh` (on Keras, the distribution's
        `device_mesh.backend_mesh`).
      label_axis: the mesh axis the labels are split over.
      batch_axis: the mesh axis the rows are split over, or None (the rows
        replicated over the mesh). The batch must be divisible by its size.
      label_count: the real label count, when the kernel's columns from it on
        are padding (default: all of kernel's columns are labels). Dense
        labels may have label_count columns or the kernel's.
      chunk_size: label columns per chunk on a device (default: from
        `head.bpmll_head_loss`'s 64 MiB scratch budget at the device's rows).

    The kernel's label count is padded with zero columns to a multiple of the
    label axis's size where it is not one (padding columns are not labels:
    loss and gradients as without them). Returns the loss sharded like the
    rows; under jax.grad the kernel's and bias's gradients come out
    label-sharded (summed over `batch_axis`) and the hidden gradient
    psummed over the label axis.
    """
    if not isinstance(mesh, Mesh):
        raise ValueError(f"mesh must be a jax.sharding.Mesh; got {type(mesh).__name__}")
    label_shards = _axis_size(mesh, label_axis, "label_axis")
    row_shards = 1 if batch_axis is None else _axis_size(mesh, batch_axis, "batch_axis")
    if batch_axis == label_axis:
        raise ValueError(f"batch_axis and label_axis must be different mesh axes; both are {label_axis!r}")
    labels = _as_array("labels", labels)
    hidden = _as_array("hidden", hidden)
    kernel = _as_array("kernel", kernel)
    bias = None if bias is None else _as_array("bias", bias)
    kernel_width = kernel.shape[1] if kernel.ndim == 2 else None
    if label_count is None:
        label_count = kernel_width
    elif kernel_width is not None and not (isinstance(label_count, int) and 0 < label_count <= kernel_width):
        raise ValueError(f"label_count must be an int in [1, {kernel_width}] (kernel's columns); got {label_count!r}")
    if not label_ids and labels.ndim == 2 and kernel_width is not None and labels.shape[1] == label_count:
        labels = jnp.pad(labels, ((0, 0), (0, kernel_width - label_count)))
    kernel_width = check_head_arguments(labels, hidden, kernel, bias, label_ids)
    batch = hidden.shape[0]
    if batch % row_shards:
        raise ValueError(
            f"the batch ({batch} rows) must be divisible by the size of batch_axis {batch_axis!r} ({row_shards})")
    compute = kernel.dtype
    bias = jnp.zeros((kernel_width,), compute) if bias is None else bias.astype(compute)
    # Pad the labels to a multiple of the label axis: columns past label_count
    # are masked out on the devices.
    padding = -kernel_width % label_shards
    if padding:
        kernel = jnp.pad(kernel, ((0, 0), (0, padding)))
        bias = jnp.pad(bias, (0, padding))
        if not label_ids:
            labels = jnp.pad(labels, ((0, 0), (0, padding)))
    shard_width = (kernel_width + padding) // label_shards
    layout = _Layout(mesh, label_axis, batch_axis, bool(label_ids), label_count, shard_width,
                     chunk_width(chunk_size, batch // row_shards, shard_width))
    return _sharded_head(layout, lax.stop_gradient(labels), hidden.astype(compute), kernel, bias)


def bpmll_head_loss_and_rows_label_sharded(
    labels,
    hidden,
    kernel,
    bias=None,
    *,
    mesh=None,
    label_axis,
    batch_axis=None,
    label_count=None,
    label_ids=False,
    chunk_size=None,
    reduction=None,
    sample_weight=None,
    name=None,
):
    """(loss, per-row loss) as `_head_jax.bpmll_head_loss_and_rows` gives
    them, from `bpmll_head_loss_label_sharded` (what `head.bpmll_head_loss`
    runs with a label_axis): the reduction and sample_weight applied to its
    per-row loss as `_head_jax`'s two-pass form applies them (the one-pass
    form has no sharded counterpart). `mesh` None: kernel's NamedSharding's
    mesh. `name` is accepted for the public signature; JAX has no op names."""
    del name
    if mesh is None:
        sharding = getattr(kernel, "sharding", None)
        if not isinstance(sharding, jax.sharding.NamedSharding) or not isinstance(sharding.mesh, Mesh):
            raise ValueError(
                "mesh: give the jax.sharding.Mesh of label_axis; it is taken from kernel's NamedSharding only where "
                f"kernel is a placed jax.Array (got {type(kernel).__name__}"
                + ("" if sharding is None else f" with {type(sharding).__name__}") + ")")
        mesh = sharding.mesh
    hidden = _as_array("hidden", hidden)
    sample_weight = None if sample_weight is None else _as_array("sample_weight", sample_weight)
    batch = hidden.shape[0] if hidden.ndim else None
    reduction = check_reduction(reduction, sample_weight, batch)
    rows = bpmll_head_loss_label_sharded(
        labels, hidden, kernel, bias, mesh=mesh, label_axis=label_axis, batch_axis=batch_axis, label_ids=label_ids,
        label_count=label_count, chunk_size=chunk_size)
    compute = rows.dtype
    acc = _accumulation_dtype(compute)
    weights, divisor = _weights_and_divisor(reduction, sample_weight, rows.shape[0], acc)
    weighted = rows.astype(acc) if weights is None else rows.astype(acc) * weights
    if reduction is None:
        return weighted.astype(compute), rows
    return _divide_no_nan(jnp.sum(weighted), divisor).astype(compute), rows
