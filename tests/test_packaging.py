"""What a user meets before the first import: make's prerequisite check
names the Debian package that is missing, the CUDA probe, and the package's
files (licence, type marker) in the sdist and source tree."""

import os
import stat
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_prereqs(python):
    return subprocess.run(["bash", os.path.join(ROOT, "tools", "check_prereqs.sh"), python],
                          capture_output=True, text=True, timeout=120)


def fake_python(tmp_path, refuse):
    """An interpreter that behaves as this one, except that `python -c CODE`
    fails where CODE mentions `refuse` (a module a Debian package provides)."""
    path = tmp_path / "python3"
    path.write_text(f'#!/bin/sh\ncase "$*" in *{refuse}*) exit 1;; esac\nexec "{sys.executable}" "$@"\n')
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return str(path)


def test_prerequisites_pass_here():
    done = run_prereqs(sys.executable)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("refuse, package", [("ensurepip", "python3-venv"), ("sysconfig", "python3-dev")])
def test_a_missing_prerequisite_stops_make_naming_its_package(tmp_path, refuse, package):
    done = run_prereqs(fake_python(tmp_path, refuse))
    assert done.returncode == 1
    assert f"  - {package} (" in done.stderr and f"sudo apt-get install {package}" in done.stderr, done.stderr


def test_the_cuda_probe_says_off_for_a_compiler_that_fails(tmp_path):
    broken = tmp_path / "nvcc"
    broken.write_text("#!/bin/sh\necho 'nvcc fatal: unsupported option' >&2\nexit 1\n")
    broken.chmod(broken.stat().st_mode | stat.S_IEXEC)
    done = subprocess.run(["bash", os.path.join(ROOT, "tools", "cuda_probe.sh"), str(broken)],
                          capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "off"
    assert "skips CUDA" in done.stderr and "unsupported option" in done.stderr


def test_the_source_tree_ships_the_licence_and_type_marker():
    with open(os.path.join(ROOT, "LICENSE")) as f:
        assert "Apache License" in f.read(2000)
    assert os.path.exists(os.path.join(ROOT, "python", "tf_fused_losses", "py.typed"))
    with open(os.path.join(ROOT, "MANIFEST.in")) as f:
        assert "LICENSE" in f.read()
