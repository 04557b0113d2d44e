"""Checks a repaired tf-fused-losses wheel before it leaves the build.

Fails (exit 1, one line per problem) unless:
  * the tag is py3-none-manylinux_*: one wheel for every CPython;
  * nothing was grafted in (no *.libs/ directory) and the shared objects are
    exactly the TF-free core tf_fused_losses/lib/libtfl_core.so and one
    TensorFlow frontend tf_fused_losses/lib/tfX.Y/libtf_fused_losses.so per
    requested minor;
  * the core's DT_NEEDED lists base system libraries only (no TensorFlow at all,
    no libpython, no CUDA runtime: cudart is linked statically), and each
    frontend's lists libtfl_core.so, TensorFlow's framework library,
    libtensorflow_cc.so.2 exactly where build_info.json says its XLA lowerings
    are in, and base system libraries;
  * every RUNPATH names nothing from the build machine (only $ORIGIN-relative
    dirs), and each frontend's finds the core (lib/) and the installed
    tensorflow/ beside the package;
  * no symbol version name was overwritten (patchelf);
  * build_info.json lists exactly the requested TensorFlow minors and says
    CUDA or not as asked; with CUDA, every shared object's fat binary holds
    exactly the requested SASS/PTX archs;
  * METADATA requires no TensorFlow distribution outside an extra, has the
    extras cpu, gpu and jax (cpu and gpu admitting every built minor), and
    carries the build facts of build_info.json as setup.py writes them
    (Keywords: build_keywords, the description's first line: describe_build);
  * the wheel is at most MAX_MB (PyPI's default file size limit).
Prints a summary: tag, size, and per shared object its needed libraries,
RUNPATH and newest glibc/libstdc++ symbol versions.

Runs in the build venv, where auditwheel brings pyelftools and packaging.
"""

import argparse
import io
import json
import os
import posixpath
import re
import struct
import sys
import zipfile
from email.parser import Parser

from elftools.elf.dynamic import DynamicSection
from elftools.elf.elffile import ELFFile
from elftools.elf.gnuversions import GNUVerNeedSection
from packaging.requirements import Requirement
from packaging.version import Version

PACKAGE = "tf_fused_losses"
LIB_DIR = f"{PACKAGE}/lib"
CORE_NAME = "libtfl_core.so"
CORE = f"{LIB_DIR}/{CORE_NAME}"
BUILD_INFO = f"{LIB_DIR}/build_info.json"
FRAMEWORK = "libtensorflow_framework.so.2"
TF_CC = "libtensorflow_cc.so.2"  # the XLA symbols of the lowerings (cc/xla)
# What a TensorFlow frontend may need at load time besides the core and the
# system libraries.
TF_LIBRARIES = {FRAMEWORK, TF_CC}
SYSTEM_LIBRARIES = {
    "libstdc++.so.6",
    "libgcc_s.so.1",
    "libm.so.6",
    "libc.so.6",
    "libdl.so.2",
    "libpthread.so.0",
    "librt.so.1",
    "ld-linux-x86-64.so.2",
    "ld-linux-aarch64.so.1",
}
EXTRAS = ("cpu", "gpu", "jax")
# The TensorFlow distribution each extra installs (setup.py EXTRAS).
EXTRA_TF = {"cpu": "tensorflow-cpu", "gpu": "tensorflow"}
MAX_MB = 100  # MiB, as PyPI counts its 100 MB default
FATBIN_MAGIC = 0xBA55ED50
FATBIN_KIND_PTX, FATBIN_KIND_ELF = 1, 2


def frontend(minor):
    return f"{LIB_DIR}/tf{minor}/libtf_fused_losses.so"


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("wheel")
    parser.add_argument("--cuda", choices=["on", "off"], required=True)
    parser.add_argument("--cuda-archs", default="", help='CMAKE_CUDA_ARCHITECTURES as built, e.g. "80-real;90-virtual"')
    parser.add_argument("--tf-versions", required=True,
                        help='TensorFlow MAJOR.MINORs with a frontend, space separated, e.g. "2.16 2.21"')
    args = parser.parse_args()
    args.tf_versions = args.tf_versions.split()
    bad = [v for v in args.tf_versions if not re.fullmatch(r"\d+\.\d+", v)]
    if not args.tf_versions or bad or len(set(args.tf_versions)) != len(args.tf_versions):
        parser.error(f"--tf-versions must list distinct MAJOR.MINORs, got {args.tf_versions}")
    return args


# setup.py's describe_build and build_keywords, which write build_info.json's
# facts into METADATA: the same strings, so that a change there fails here.
def describe_build(info):
    builds = info.get("tensorflow_builds") or {}
    tf_text = ", ".join(b["version"] for b in builds.values()) or "no TensorFlow (JAX only)"
    text = f"Op libraries for TensorFlow {tf_text}; XLA FFI handlers (API {info.get('xla_ffi_api')})"
    if info.get("cuda"):
        archs = ", ".join(str(arch) for arch in info.get("cuda_archs") or []) or "the toolkit's default archs"
        return f"{text}, with CUDA {info['cuda']} kernels for {archs}."
    return f"{text}, CPU kernels only (no CUDA)."


def build_keywords(info):
    words = [f"tensorflow-{b['version']}" for b in (info.get("tensorflow_builds") or {}).values()]
    if info.get("cuda"):
        words.append(f"cuda-{info['cuda']}")
        words.extend(str(arch) for arch in info.get("cuda_archs") or [])
    else:
        words.append("cpu-only")
    return words


def expected_archs(cmake_archs):
    """(SASS archs, PTX archs) that CMAKE_CUDA_ARCHITECTURES asks nvcc for."""
    sass, ptx = set(), set()
    for entry in filter(None, cmake_archs.split(";")):
        number, _, kind = entry.partition("-")
        if kind in ("", "real"):
            sass.add(int(number))
        if kind in ("", "virtual"):
            ptx.add(int(number))
    return sass, ptx


def fatbin_archs(section_data):
    """(SASS archs, PTX archs) in an .nv_fatbin section: a sequence of fat binaries,
    each a 16-byte header (magic, version, header size, payload size) followed by
    entries whose header gives kind (1 PTX, 2 ELF) and the target sm number."""
    sass, ptx = set(), set()
    offset = 0
    while offset + 16 <= len(section_data):
        magic, _, header_size, payload_size = struct.unpack_from("<IHHQ", section_data, offset)
        if magic != FATBIN_MAGIC:
            offset += 8  # fat binaries are 8-byte aligned, with padding between them
            continue
        entry = offset + header_size
        end = entry + payload_size
        while entry < end:
            kind, _, entry_header, padded_size = struct.unpack_from("<HHIQ", section_data, entry)
            sm = struct.unpack_from("<I", section_data, entry + 28)[0]
            (ptx if kind == FATBIN_KIND_PTX else sass).add(sm)
            entry += entry_header + padded_size
        offset = end
    return sass, ptx


def library_facts(data):
    elf = ELFFile(io.BytesIO(data))
    needed, runpath = [], []
    for section in elf.iter_sections():
        if isinstance(section, DynamicSection):
            for tag in section.iter_tags():
                if tag.entry.d_tag == "DT_NEEDED":
                    needed.append(tag.needed)
                elif tag.entry.d_tag == "DT_RUNPATH":
                    runpath.extend(tag.runpath.split(":"))
                elif tag.entry.d_tag == "DT_RPATH":
                    runpath.extend(tag.rpath.split(":"))
    versions = {}
    version_needs = []
    for section in elf.iter_sections():
        if isinstance(section, GNUVerNeedSection):
            for needed_file, auxiliaries in section.iter_versions():
                for aux in auxiliaries:
                    version_needs.append((needed_file.name, aux.name))
                    prefix, _, number = aux.name.partition("_")
                    if number[:1].isdigit():
                        key = tuple(int(x) for x in re.findall(r"\d+", number))
                        versions[prefix] = max(versions.get(prefix, key), key)
    fatbin = elf.get_section_by_name(".nv_fatbin")
    return {
        "needed": needed,
        "runpath": [p for p in runpath if p],
        "newest": {k: ".".join(map(str, v)) for k, v in sorted(versions.items())},
        "version_needs": version_needs,
        "fatbin": fatbin.data() if fatbin is not None else None,
    }


def resolved_runpath(name, entry):
    """Where an $ORIGIN-relative RUNPATH entry of wheel member `name` points,
    relative to site-packages (the wheel's root) once installed."""
    origin = posixpath.dirname(name)
    return posixpath.normpath(posixpath.join(origin, entry.replace("${ORIGIN}", "$ORIGIN")[len("$ORIGIN"):].lstrip("/")))


def check_library(name, facts, allowed, required, problems):
    """The checks every shared object gets: DT_NEEDED, RUNPATH, symbol versions."""
    foreign = [lib for lib in facts["needed"] if lib not in allowed]
    if foreign:
        problems.append(f"{name} needs {foreign}: only {sorted(allowed)} may be")
    for lib in required:
        if lib not in facts["needed"]:
            problems.append(f"{name} does not link {lib} (needed: {facts['needed']})")
    absolute = [p for p in facts["runpath"] if not p.replace("${ORIGIN}", "$ORIGIN").startswith("$ORIGIN")]
    if absolute:
        problems.append(f"{name} RUNPATH {absolute} names directories of the build machine")
    # A symbol version name rewritten to X's (patchelf overwriting a .dynstr tail
    # it shares with an old RUNPATH) makes the library unloadable.
    mangled = [need for need in facts["version_needs"] if re.fullmatch(r"X+", need[1])]
    if mangled:
        problems.append(f"{name} needs symbol versions whose names were overwritten: {mangled}")
    if TF_CC in facts["needed"] and (TF_CC, "tensorflow") not in facts["version_needs"]:
        problems.append(f"{name} links {TF_CC} without its 'tensorflow' symbol version")


def check_cuda(name, facts, args, problems):
    if args.cuda == "off":
        if facts["fatbin"] is not None:
            problems.append(f"{name} has CUDA device code in a CUDA=off build")
    elif facts["fatbin"] is None:
        problems.append(f"{name} has no .nv_fatbin section: no CUDA kernels were compiled in")
    else:
        want = expected_archs(args.cuda_archs)
        got = fatbin_archs(facts["fatbin"])
        if got != want:
            problems.append(f"{name}: device code for SASS {sorted(got[0])} PTX {sorted(got[1])}: "
                            f"asked for SASS {sorted(want[0])} PTX {sorted(want[1])}")


def check_metadata(metadata, info, minors, problems):
    requires = [Requirement(r) for r in metadata.get_all("Requires-Dist") or []]
    for requirement in requires:
        normalized = re.sub(r"[-_.]+", "-", requirement.name).lower()
        if normalized.startswith(("tensorflow", "tf-")) and "extra ==" not in str(requirement.marker or ""):
            problems.append(f"Requires-Dist {requirement}: the wheel must require no TensorFlow outside an extra "
                            f"(a second TF distribution beside the user's would share one tensorflow/ directory)")
    extras = metadata.get_all("Provides-Extra") or []
    missing = [extra for extra in EXTRAS if extra not in extras]
    if missing:
        problems.append(f"METADATA Provides-Extra {extras} lacks {missing}")
    for extra, distribution in EXTRA_TF.items():
        pins = [r for r in requires if r.name == distribution and r.marker and r.marker.evaluate({"extra": extra})]
        if len(pins) != 1:
            problems.append(f"extra [{extra}]: expected one {distribution} requirement, got {[str(r) for r in pins]}")
            continue
        refused = [m for m in minors if not pins[0].specifier.contains(Version(f"{m}.0"))]
        if refused:
            problems.append(f"extra [{extra}] {pins[0]} refuses TensorFlow {refused}, which the wheel has frontends for")

    keywords = (metadata.get("Keywords") or "").split(",")
    wanted_keywords = build_keywords(info)
    if any(k not in keywords for k in wanted_keywords):
        problems.append(f"METADATA Keywords {keywords} lack {wanted_keywords} (setup.py build_keywords)")
    first_line = (metadata.get_payload() or "").lstrip().split("\n", 1)[0]
    if first_line != describe_build(info):
        problems.append(f"METADATA description starts {first_line!r}, not {describe_build(info)!r} "
                        f"(setup.py describe_build)")
    return requires


def main():
    args = parse_args()
    problems = []
    name = os.path.basename(args.wheel)
    tag = re.match(r"[^-]+-[^-]+-(.+)\.whl$", name).group(1)
    if not re.fullmatch(r"py3-none-manylinux_\d+_\d+_\w+(\.manylinux\w+)*", tag):
        problems.append(f"wheel tag {tag}: expected py3-none-manylinux_X_Y_<arch> (one wheel for every CPython)")
    size_mb = os.path.getsize(args.wheel) / 2**20
    if size_mb > MAX_MB:
        problems.append(f"the wheel is {size_mb:.1f} MB, over PyPI's {MAX_MB} MB limit")

    frontends = {minor: frontend(minor) for minor in args.tf_versions}
    with zipfile.ZipFile(args.wheel) as wheel:
        names = wheel.namelist()
        grafted = sorted(n for n in names if ".libs/" in n)
        if grafted:
            problems.append(f"auditwheel bundled libraries that TensorFlow, the system or the wheel provide: {grafted}")
        objects = sorted(n for n in names if re.search(r"\.so(\.|$)", n))
        expected = sorted([CORE, *frontends.values()])
        if objects != expected:
            problems.append(f"shared objects {objects}: expected {expected}")
        facts = {n: library_facts(wheel.read(n)) for n in expected if n in names}
        info = json.loads(wheel.read(BUILD_INFO)) if BUILD_INFO in names else {}
        if not info:
            problems.append(f"no {BUILD_INFO} in the wheel")
        metadata_name = next(n for n in names if n.endswith(".dist-info/METADATA"))
        metadata = Parser().parsestr(wheel.read(metadata_name).decode())
        dist_info = metadata_name.rsplit("/", 1)[0]
        licences = [n for n in names if n.startswith(dist_info + "/") and os.path.basename(n) == "LICENSE"]
        if not licences or b"Apache License" not in wheel.read(licences[0]):
            problems.append(f"no Apache LICENSE text in {dist_info}/ (setup.py license_files)")
        if "tf_fused_losses/py.typed" not in names:
            problems.append("no tf_fused_losses/py.typed: type checkers would ignore the package's hints")

    builds = info.get("tensorflow_builds") or {}
    if sorted(builds) != sorted(args.tf_versions):
        problems.append(f"build_info.json tensorflow_builds has {sorted(builds)}: expected exactly {sorted(args.tf_versions)}")
    for minor, build in builds.items():
        if not str(build.get("version", "")).startswith(minor + "."):
            problems.append(f"build_info.json tensorflow_builds[{minor!r}] = {build}: expected version {minor}.x")
    if args.cuda == "off" and info.get("cuda"):
        problems.append(f"build_info.json cuda={info['cuda']!r} in a CUDA=off build")
    if args.cuda == "on" and not info.get("cuda"):
        problems.append(f"build_info.json cuda={info.get('cuda')!r} in a CUDA=on build")

    if CORE in facts:
        check_library(CORE, facts[CORE], SYSTEM_LIBRARIES, [], problems)
        check_cuda(CORE, facts[CORE], args, problems)
    for minor, library in frontends.items():
        if library not in facts:
            continue
        xla = (builds.get(minor) or {}).get("xla")
        check_library(library, facts[library], {CORE_NAME} | TF_LIBRARIES | SYSTEM_LIBRARIES,
                      [CORE_NAME, FRAMEWORK] + ([TF_CC] if xla else []), problems)
        if not xla and TF_CC in facts[library]["needed"]:
            problems.append(f"{library} links {TF_CC}, but build_info.json says TensorFlow {minor} has no XLA lowerings")
        check_cuda(library, facts[library], args, problems)
        # Installed, the frontend must find the core in lib/ and TensorFlow's
        # libraries in site-packages/tensorflow.
        places = [resolved_runpath(library, p) for p in facts[library]["runpath"]]
        for wanted, what in ((LIB_DIR, CORE_NAME), ("tensorflow", FRAMEWORK)):
            if wanted not in places:
                problems.append(f"{library} RUNPATH {facts[library]['runpath']} does not reach {wanted}/ ({what})")

    requires = check_metadata(metadata, info, args.tf_versions, problems)

    print(f"wheel:      {name}")
    print(f"size:       {size_mb:.1f} MB (limit {MAX_MB} MB)")
    for library, library_facts_ in facts.items():
        print(f"{library}:")
        print(f"  needed:   {', '.join(library_facts_['needed'])}")
        print(f"  runpath:  {':'.join(library_facts_['runpath']) or '(none)'}")
        print(f"  newest:   {', '.join(f'{k}_{v}' for k, v in library_facts_['newest'].items())}")
        if library_facts_["fatbin"] is not None:
            sass, ptx = fatbin_archs(library_facts_["fatbin"])
            print(f"  device:   SASS {sorted(sass)}, PTX {sorted(ptx)}")
    print(f"build_info: {json.dumps(info)}")
    print(f"requires:   {', '.join(map(str, requires))}")
    for problem in problems:
        print(f"check_wheel: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
