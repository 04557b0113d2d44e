"""The README's quick starts run as written: each ```python block after a
`<!-- quickstart: ... -->` marker runs in a fresh interpreter (TensorFlow
backend) and must exit 0 and print its evaluation."""

import os
import re
import subprocess
import sys

import pytest

from helpers import subprocess_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def quickstarts():
    with open(os.path.join(ROOT, "README.md")) as f:
        text = f.read()
    return re.findall(r"<!-- quickstart: (.+?) -->\n```python\n(.*?)```", text, re.S)


def test_the_readme_has_its_three_quick_starts():
    assert [name for name, _ in quickstarts()] == ["dense labels", "label ids", "masked sequences"]


@pytest.mark.parametrize("name, code", quickstarts(), ids=[name for name, _ in quickstarts()])
def test_quick_start_runs_as_written(name, code, tmp_path):
    pytest.importorskip("tensorflow")
    env = subprocess_env({"KERAS_BACKEND": "tensorflow"})
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600,
                          cwd=tmp_path)
    assert done.returncode == 0, f"{name}:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    assert "loss" in done.stdout.strip().splitlines()[-1]


def heading_anchor(heading):
    """GitHub's anchor for a heading: lower case, spaces to '-', punctuation dropped."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@pytest.mark.parametrize("document", ["README.md"] + sorted(
    os.path.join("docs", name) for name in os.listdir(os.path.join(ROOT, "docs")) if name.endswith(".md")))
def test_relative_links_resolve(document):
    # Moving a section between the README and docs/ must not leave a link behind.
    path = os.path.join(ROOT, document)
    with open(path) as f:
        text = f.read()
    broken = []
    for target in re.findall(r"\]\((?!https?://)([^)\s]+)\)", text):
        file_part, _, anchor = target.partition("#")
        linked = os.path.normpath(os.path.join(os.path.dirname(path), file_part)) if file_part else path
        if not os.path.exists(linked):
            broken.append(target)
        elif anchor and linked.endswith(".md"):
            with open(linked) as f:
                anchors = {heading_anchor(h) for h in re.findall(r"(?m)^#+ (.*)$", f.read())}
            if anchor not in anchors:
                broken.append(target)
    assert not broken, f"{document}: links to nothing: {broken}"


def test_the_pypi_description_has_no_relative_links():
    # PyPI shows the README away from the repository: a relative link there is a 404.
    source = open(os.path.join(ROOT, "setup.py")).read().split("\nsetup(\n")[0]
    namespace = {"__file__": os.path.join(ROOT, "setup.py"), "__name__": "setup_under_test"}
    exec(compile(source, "setup.py", "exec"), namespace)
    description = namespace["pypi_long_description"]()
    assert "## Quick start" in description
    assert not re.findall(r"\]\((?!https?://)[^)]+\)", description)
