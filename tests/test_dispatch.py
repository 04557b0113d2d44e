"""Which backend runs a call (`_dispatch`), and the argument checks every
backend shares (`_validation`): arrays of two frameworks are refused, the
fused JAX calls run only on platforms with handlers, and epsilon is any real
scalar. Runs wherever the package imports: the framework-specific parts
skip, saying why, where their framework is absent (CI runs this file in the
TensorFlow and the JAX environments)."""

import importlib.util
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest

from tf_fused_losses import _dispatch
from tf_fused_losses._validation import check_epsilon

HAS_JAX = importlib.util.find_spec("jax") is not None
HAS_TF = importlib.util.find_spec("tensorflow") is not None


def fake_array(module):
    """An object whose class says it belongs to `module`, as framework_of
    reads it (no framework needed)."""
    cls = type("FakeArray", (), {"__module__": module, "dtype": np.dtype("float32"), "shape": (2, 3)})
    return cls()


# --------------------------------------------------------------------------
# Two frameworks in one call
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "y_pred_module, other_module, other_name",
    [
        ("jax._src.array", "tensorflow.python.framework.ops", "y_true"),
        ("torch", "jaxlib.xla_extension", "y_true"),
        ("tensorflow.python.framework.ops", "torch", "mask"),
    ],
)
def test_arrays_of_two_frameworks_are_refused_naming_both(y_pred_module, other_module, other_name):
    y_pred = fake_array(y_pred_module)
    other = fake_array(other_module)
    arrays = (y_pred, other) if other_name == "y_true" else (y_pred, None, other)
    first = _dispatch.framework_of(y_pred)
    second = _dispatch.framework_of(other)
    with pytest.raises(ValueError) as err:
        _dispatch.choose(*arrays)
    message = str(err.value)
    assert f"a {first} y_pred and a {second} {other_name}" in message, message
    assert f"Convert {other_name} to a {first} array" in message, message


def test_numpy_goes_with_any_framework():
    y_pred = fake_array("jax._src.array")
    assert _dispatch.choose(y_pred, np.zeros((2, 3)), [[1, 0, 1]]) == _dispatch.JAX
    assert _dispatch.choose(None, fake_array("torch"), np.ones((2, 3))) == _dispatch.TORCH


@pytest.mark.skipif(not (HAS_JAX and HAS_TF), reason="needs TensorFlow and JAX in one environment")
def test_a_tensorflow_label_with_a_jax_logit_is_refused():
    import jax.numpy as jnp
    import tensorflow as tf

    import tf_fused_losses as tfl

    with pytest.raises(ValueError, match=r"a jax y_pred and a tensorflow y_true"):
        tfl.bpmll_loss(tf.constant([[1.0, 0.0]]), jnp.zeros((1, 2)))


# --------------------------------------------------------------------------
# epsilon: any real scalar, known when traced
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value", [1e-7, 0, 3, np.float32(1e-7), np.float64(1e-7), np.float16(0.001), np.int32(2), np.array(1e-7)]
)
def test_epsilon_takes_any_real_scalar(value):
    assert check_epsilon(value) == pytest.approx(float(value))
    assert type(check_epsilon(value)) is float


@pytest.mark.parametrize(
    "value, message",
    [
        (np.array([1e-7]), r"epsilon must be a scalar, not an array; got shape \(1,\)"),
        (np.ones((2, 2)), r"epsilon must be a scalar, not an array; got shape \(2, 2\)"),
        (True, r"epsilon must be a real scalar >= 0; got True"),
        (np.bool_(True), r"epsilon must be a real scalar >= 0"),
        ("1e-7", r"epsilon must be a real scalar >= 0; got str '1e-7'"),
        (1j, r"epsilon must be a real scalar >= 0; got complex"),
        (-1.0, r"epsilon must be finite and >= 0; got -1.0"),
        (np.float32("nan"), r"epsilon must be finite and >= 0; got nan"),
        (1e39, r"epsilon must be at most 3.402823e\+38"),
    ],
)
def test_epsilon_refuses_what_is_not_a_real_scalar(value, message):
    with pytest.raises(ValueError, match=message):
        check_epsilon(value)


@pytest.mark.skipif(not HAS_JAX, reason="needs jax")
def test_epsilon_takes_a_jax_scalar_and_refuses_a_traced_one():
    import jax
    import jax.numpy as jnp

    assert check_epsilon(jnp.float32(1e-7)) == pytest.approx(1e-7)
    with pytest.raises(ValueError, match=r"epsilon must be known when the loss is traced"):
        jax.jit(lambda e: check_epsilon(e) or e)(jnp.float32(1e-7))


@pytest.mark.skipif(not HAS_TF, reason="needs TensorFlow")
def test_epsilon_takes_an_eager_tensorflow_scalar_and_refuses_a_symbolic_one():
    import tensorflow as tf

    assert check_epsilon(tf.constant(1e-7)) == pytest.approx(1e-7)
    with pytest.raises(ValueError, match=r"epsilon must be known when the loss is traced"):
        tf.function(lambda e: check_epsilon(e) or e)(tf.constant(1e-7))


# --------------------------------------------------------------------------
# JAX: the fused calls only on platforms with handlers
# --------------------------------------------------------------------------


@pytest.fixture
def jax_ops(monkeypatch):
    if not HAS_JAX:
        pytest.skip("needs jax")
    from tf_fused_losses import _jax_ops

    try:
        _jax_ops.load()
    except RuntimeError as e:
        pytest.skip(f"the fused JAX ops do not load here: {e}")
    _dispatch.reset_jax_state()
    yield _jax_ops
    _dispatch.reset_jax_state()


def test_cpu_arrays_run_the_fused_calls(jax_ops):
    import jax.numpy as jnp

    y_pred = jax_ops.jax.device_put(jnp.zeros((2, 3)), jax_ops.jax.devices("cpu")[0])
    assert jax_ops.platform_of(y_pred) == "cpu"
    assert jax_ops.has_handlers("cpu")
    assert _dispatch.backend(y_pred) is jax_ops


def test_arrays_on_a_platform_without_handlers_take_the_keras_forms_with_one_warning(jax_ops, monkeypatch):
    """A CUDA jaxlib beside a core built without CUDA: jaxlib would fail at
    lowering ("no handler for platform CUDA"); the keras.ops forms run
    instead, with one warning naming the platform. No GPU here: the arrays'
    platform is faked."""
    import jax.numpy as jnp

    if _dispatch.keras_backend() != "jax":
        pytest.skip(f"the keras.ops forms of JAX arrays need KERAS_BACKEND=jax; it is {_dispatch.keras_backend()}")
    from tf_fused_losses import _keras_ops

    assert not jax_ops.has_handlers("gpu") or "CUDA" in jax_ops.load()["platforms"]
    monkeypatch.setattr(jax_ops, "has_handlers", lambda platform: platform == "cpu")
    monkeypatch.setattr(jax_ops, "platform_of", lambda *arrays: "gpu")
    y = jnp.array([[1.0, 0.0, 1.0]])
    c = jnp.array([[0.5, -1.0, 2.0]])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        chosen = [_dispatch.backend(c, y) for _ in range(3)]
        import tf_fused_losses as tfl

        loss = tfl.bpmll_loss(y, c)
    assert all(backend is _keras_ops for backend in chosen)
    runtime = [w for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(runtime) == 1, [str(w.message) for w in runtime]
    assert "gpu platform" in str(runtime[0].message), str(runtime[0].message)
    np.testing.assert_allclose(np.asarray(loss), np.asarray(_keras_ops.bpmll_loss(y, c)), rtol=0)


def test_gpu_is_cuda_for_the_handlers(jax_ops, monkeypatch):
    monkeypatch.setattr(jax_ops, "load", lambda: {"platforms": ["cpu", "CUDA"]})
    assert jax_ops.has_handlers("gpu") and jax_ops.has_handlers("cuda") and jax_ops.has_handlers("cpu")
    monkeypatch.setattr(jax_ops, "load", lambda: {"platforms": ["cpu"]})
    assert not jax_ops.has_handlers("gpu")


# --------------------------------------------------------------------------
# The package's layers
# --------------------------------------------------------------------------

# The package's modules by layer, lowest first (docs/architecture.md). A new
# module must be placed here: the test below reads every module.
LAYERS = [
    ("base", {"_loader", "_validation", "_head_validation", "_sequence_rows"}),
    ("backends", {"_tf_ops", "_tf_pure", "_ids_tf", "_jax_ops", "_ids_jax", "_keras_ops", "_torch_ops",
                  "_core_c_api", "_head_tf", "_head_jax", "_head_sharded_jax"}),
    ("functional", {"_dispatch", "bpmll", "correlation", "head", "metrics", "reference"}),
    ("keras", {"losses", "head_layers", "keras_metrics"}),
]


def test_no_module_imports_a_layer_above_it():
    """Each module's imports of package modules (top-level and inside
    functions, read from the source) stay within its layer and below: the
    backends import no public module, and nothing imports `losses`."""
    import ast

    import tf_fused_losses

    root = os.path.dirname(tf_fused_losses.__file__)
    level = {module: i for i, (_, modules) in enumerate(LAYERS) for module in modules}
    files = {name[:-3] for name in os.listdir(root) if name.endswith(".py") and name != "__init__.py"}
    assert files <= set(level), f"modules in no layer: {sorted(files - set(level))}"
    for module in sorted(files):
        allowed = {m for m, lv in level.items() if lv <= level[module]}
        with open(os.path.join(root, module + ".py")) as f:
            tree = ast.parse(f.read())
        imported = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                imported |= {node.module} if node.module else {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tf_fused_losses."):
                imported.add(node.module.split(".", 1)[1])
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith(
                "tf_fused_losses._"
            ):
                imported.add(node.value.split(".", 1)[1])  # importlib.import_module("tf_fused_losses._x")
        assert imported <= allowed, f"{module} ({LAYERS[level[module]][0]}) imports {sorted(imported - allowed)}"


def test_star_import_imports_no_framework():
    code = (
        "import sys\nfrom tf_fused_losses import *\n"
        "print(sorted(m for m in ('tensorflow', 'jax', 'torch', 'keras') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"
