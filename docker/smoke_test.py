"""Smoke test of an installed tf-fused-losses wheel, run from outside the source
tree in a venv holding the wheel given as argv[1] and a TensorFlow it has a
frontend for: the package imports from site-packages, build_info() is the
build_info.json shipped in the wheel plus the installed TensorFlow's frontend
(`tensorflow`, `tensorflow_library`, `xla`), that frontend and the core load
from the installed package, and each fused loss and its gradient match the
pure-TF references.
"""

import json
import os
import sys
import sysconfig
import zipfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import tensorflow as tf

import tf_fused_losses as tfl
from tf_fused_losses import _loader, reference


def loss_and_gradient(fn, y_true, y_pred):
    y_pred = tf.constant(y_pred)
    with tf.GradientTape() as tape:
        tape.watch(y_pred)
        loss = fn(tf.constant(y_true), y_pred)
        total = tf.reduce_sum(loss)
    return loss.numpy(), tape.gradient(total, y_pred).numpy()


def compare(name, fused, ref, y_true, y_pred):
    loss, grad = loss_and_gradient(fused, y_true, y_pred)
    ref_loss, ref_grad = loss_and_gradient(ref, y_true, y_pred)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-9, atol=1e-12, err_msg=f"{name} loss")
    np.testing.assert_allclose(grad, ref_grad, rtol=1e-7, atol=1e-10, err_msg=f"{name} gradient")
    print(f"{name}: loss {loss.shape} and gradient match the reference")


def loaded_libraries():
    """The paths of our shared objects that this process has mapped."""
    with open("/proc/self/maps") as maps:
        paths = {line.split(None, 5)[5].strip() for line in maps if len(line.split(None, 5)) == 6}
    names = (_loader.LIBRARY_NAME, _loader.CORE_LIBRARY_NAME)
    return sorted(os.path.realpath(p) for p in paths if os.path.basename(p) in names)


def check_installed(wheel):
    site = sysconfig.get_paths()["platlib"]
    assert tfl.__file__.startswith(site), f"imported {tfl.__file__}, not the installed wheel in {site}"
    assert not tfl.use_pure_tf(), f"{tfl.PURE_TF_ENV} is set: the smoke test must run the fused ops"
    with zipfile.ZipFile(wheel) as archive:
        shipped = json.loads(archive.read("tf_fused_losses/lib/build_info.json"))
    minor = ".".join(tf.__version__.split(".")[:2])
    builds = shipped["tensorflow_builds"]
    assert minor in builds, f"TensorFlow {tf.__version__} is installed, but the wheel has frontends for {sorted(builds)}"
    library = _loader.tf_library_path(minor)
    assert library.startswith(site) and os.path.exists(library), library
    # Before anything is loaded: the shipped facts, and the frontend for this TensorFlow.
    expected = dict(shipped, tensorflow=builds[minor]["version"], tensorflow_library=library, xla=builds[minor]["xla"])
    before = tfl.build_info()
    before.pop("cpu_isa", None)  # present only where something loaded the core already
    assert before == expected, (before, expected)
    tfl.load_ops()  # raises, naming the reason, when the library does not load
    # The frontend for this minor and the core next to it, not a copy from elsewhere.
    wanted = sorted(os.path.realpath(p) for p in (library, _loader.core_library_path()))
    assert loaded_libraries() == wanted, (loaded_libraries(), wanted)
    info = tfl.build_info()
    shipped_isas = [isa.removeprefix("isa_") for isa in info["cpu_isas"].split(";")]
    assert info.get("cpu_isa") in shipped_isas, info
    print(f"tf_fused_losses {tfl.__version__} from {os.path.dirname(tfl.__file__)}, TF {tf.__version__}")
    print(f"loaded: {', '.join(wanted)}")
    print(f"build_info(): {info}")


def main():
    rng = np.random.default_rng(5)
    labels = (rng.random((6, 40)) < 0.3).astype(np.float64)
    labels[:, 0], labels[:, 1] = 1.0, 0.0  # every row has a positive and a negative label
    checks = [
        ("installed package", lambda: check_installed(sys.argv[1])),
        ("bpmll_loss", lambda: compare("bpmll_loss", tfl.bpmll_loss, reference.bpmll_loss, labels,
                                       rng.normal(size=(6, 40)))),
    ]
    if hasattr(tfl, "correlation_loss"):
        y_true, y_pred = rng.normal(size=(4, 50)), rng.normal(size=(4, 50))
        checks += [
            ("correlation_loss", lambda: compare("correlation_loss", tfl.correlation_loss,
                                                 reference.correlation_loss, y_true, y_pred)),
            ("ccc_loss", lambda: compare("ccc_loss", tfl.ccc_loss, reference.ccc_loss, y_true, y_pred)),
        ]
    failed = 0
    for name, check in checks:
        try:
            check()
        except Exception as error:  # report every check, then fail
            failed += 1
            print(f"FAILED {name}: {type(error).__name__}: {error}")
    print(f"{len(checks) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
