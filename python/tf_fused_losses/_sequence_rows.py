"""How a correlation loss call maps onto the fused ops' rows, written once
for every backend.

The ops correlate each row of a (rows, length) pair with an optional
(rows, length) mask. A call gives (batch, steps) or (batch, steps, targets)
arrays:

* per sequence (the default): one row per (sequence, target), of `steps`
  elements: (batch, steps, targets) -> (batch * targets, steps);
* corpus=True: one row per target over every step of every sequence, as
  AVEC scores CCC over the concatenated corpus: -> (targets, batch * steps).

The loss comes back in the caller's layout: (batch, steps) for (batch,
steps) and (batch, steps, 1) inputs, (batch, steps, targets) otherwise. A
(batch, steps) mask applies to every target. The backends differ only in
their array functions, which they pass in (`ArrayFunctions`); gradients
flow back through the transposes and reshapes by each framework's autodiff.
"""

import dataclasses
from typing import Any, Callable


@dataclasses.dataclass(frozen=True)
class ArrayFunctions:
    """A backend's transpose(x, perm), reshape(x, shape), broadcast_to(x,
    shape) and dims(x) (the dimensions as Python ints where known, else the
    framework's scalars, which reshape accepts)."""

    transpose: Callable[[Any, tuple], Any]
    reshape: Callable[[Any, Any], Any]
    broadcast_to: Callable[[Any, Any], Any]
    dims: Callable[[Any], list]


def to_rows(fns, y_true, y_pred, mask, corpus):
    """(y_true, y_pred, mask) as the ops' rows, and a function that puts the
    rows' loss back into the caller's layout. Inputs are checked
    (`_validation.check_sequence_arguments`); mask is bool or None."""
    dims = fns.dims(y_pred)
    batch, steps = dims[0], dims[1]
    targets = dims[2] if len(dims) == 3 else 1
    single = len(dims) == 2 or (isinstance(targets, int) and targets == 1)
    out_shape = (batch, steps) if single else (batch, steps, targets)

    if single and not corpus:
        # (batch, steps[, 1]): the rows as they are (a reshape is free).
        rows = (batch, steps)
        return _reshaped(fns, rows, y_true, y_pred, mask), lambda loss: fns.reshape(loss, out_shape)
    if single:
        rows = (1, batch * steps)
        return _reshaped(fns, rows, y_true, y_pred, mask), lambda loss: fns.reshape(loss, out_shape)

    def cube(x):
        return fns.reshape(x, (batch, steps, targets))

    if corpus:
        to = lambda x: fns.reshape(fns.transpose(cube(x), (2, 0, 1)), (targets, batch * steps))  # noqa: E731
        masks = None if mask is None else fns.reshape(
            fns.broadcast_to(fns.reshape(mask, (1, batch, steps)), (targets, batch, steps)), (targets, batch * steps)
        )
        back = lambda loss: fns.transpose(fns.reshape(loss, (targets, batch, steps)), (1, 2, 0))  # noqa: E731
    else:
        to = lambda x: fns.reshape(fns.transpose(cube(x), (0, 2, 1)), (batch * targets, steps))  # noqa: E731
        masks = None if mask is None else fns.reshape(
            fns.broadcast_to(fns.reshape(mask, (batch, 1, steps)), (batch, targets, steps)), (batch * targets, steps)
        )
        back = lambda loss: fns.transpose(fns.reshape(loss, (batch, targets, steps)), (0, 2, 1))  # noqa: E731
    return (to(y_true), to(y_pred), masks), back


def _reshaped(fns, rows, y_true, y_pred, mask):
    return (
        fns.reshape(y_true, rows),
        fns.reshape(y_pred, rows),
        None if mask is None else fns.reshape(mask, rows),
    )
