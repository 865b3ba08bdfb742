#!/usr/bin/env python3
"""Fetch the libtorch that modelci builds against, once.

The libtorch lands in `.libtorch/<version>/` at the repository root (git-ignored),
laid out as tch expects: `lib/`, `include/` and a `build-version` file.
`.cargo/config.toml` points LIBTORCH there, and build.rs gives the modelci binary
an rpath to its `lib/`, so neither cargo nor the binary needs LD_LIBRARY_PATH.

What it does when the folder is missing or stale:

1. `pip download` the wheels listed in scripts/libtorch-wheels.txt, with
   `--no-deps --require-hashes`, for CPython 3.11 whatever Python runs this.
2. Check every downloaded wheel's sha256 against that list once more.
3. Unpack `torch/lib` and `torch/include`, leaving out the CUDA and Python
   bindings (they need the full CUDA stack; the CPU build does not), plus
   `libcudart.so.13` and `libcupti.so.13` on Linux.
4. Write the result beside its final place and rename it in, so an interrupted
   run never leaves a half-unpacked libtorch that looks complete.

It is idempotent: when the folder's stamp matches the wheel list, it only prints
the path. Set LIBTORCH to use a libtorch of your own instead (this script then
does nothing).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

VERSION = "2.13.0"
ROOT = Path(__file__).resolve().parent.parent
WHEEL_LIST = ROOT / "scripts" / "libtorch-wheels.txt"
STAMP = ".modelci-complete"

# Libraries of the torch wheel that need CUDA beyond cudart/cupti, or Python.
SKIPPED_LIBRARY = re.compile(r"(cuda|nvshmem|nvrtc|_python)")
# Runtime libraries taken from the NVIDIA wheels (Linux only).
NVIDIA_LIBRARIES = ("libcudart.so.13", "libcupti.so.13")


def log(message: str) -> None:
    print(f"libtorch: {message}", file=sys.stderr, flush=True)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def allowed_hashes(wheel_list: Path) -> set[str]:
    return set(re.findall(r"--hash=sha256:([0-9a-f]{64})", wheel_list.read_text()))


def download(target: Path, cuda: bool) -> list[Path]:
    platform = ["--python-version", "3.11", "--implementation", "cp", "--abi", "cp311"]
    quiet = ["--disable-pip-version-check", "--quiet", "--only-binary=:all:", "-d", str(target)]
    if cuda:
        # The CUDA flavour takes every NVIDIA library torch depends on, as pip resolves them.
        # Only the torch wheel's hash is pinned; the others are checked by pip over TLS.
        command = [sys.executable, "-m", "pip", "download", *platform, *quiet, f"torch=={VERSION}"]
        log(f"downloading torch=={VERSION} with its CUDA libraries from PyPI (several GB)")
    else:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--require-hashes",
                   *platform, *quiet, "-r", str(WHEEL_LIST)]
        log(f"downloading torch=={VERSION} and its runtime wheels from PyPI")
    result = subprocess.run(command)
    if result.returncode != 0:
        sys.exit(
            f"libtorch: pip download failed (exit {result.returncode}).\n"
            "hint: PyPI must be reachable; or set LIBTORCH to an existing libtorch "
            f"{VERSION} folder."
        )
    return sorted(target.glob("*.whl"))


def verify(wheels: list[Path], cuda: bool) -> None:
    allowed = allowed_hashes(WHEEL_LIST)
    for wheel in wheels:
        if cuda and not wheel.name.startswith("torch-"):
            continue
        actual = sha256_of(wheel)
        if actual not in allowed:
            sys.exit(
                f"libtorch: {wheel.name} has sha256 {actual}, which "
                f"{WHEEL_LIST.relative_to(ROOT)} does not list; refusing to use it."
            )
        log(f"verified {wheel.name}")


def extract(wheel: zipfile.ZipFile, member: zipfile.ZipInfo, destination: Path) -> None:
    destination.parent.mkdir(parents=True, exist_ok=True)
    with wheel.open(member) as source, destination.open("wb") as target:
        shutil.copyfileobj(source, target, 1 << 20)
    mode = (member.external_attr >> 16) & 0o777
    destination.chmod(mode or 0o644)


def unpack(wheels: list[Path], staging: Path, cuda: bool) -> None:
    for path in wheels:
        with zipfile.ZipFile(path) as wheel:
            for member in wheel.infolist():
                if member.is_dir():
                    continue
                name = member.filename
                if name.startswith("torch/include/"):
                    extract(wheel, member, staging / "include" / name[len("torch/include/"):])
                elif name.startswith("torch/lib/"):
                    relative = name[len("torch/lib/"):]
                    if "/" in relative or (not cuda and SKIPPED_LIBRARY.search(relative)):
                        continue
                    extract(wheel, member, staging / "lib" / relative)
                elif Path(name).name in NVIDIA_LIBRARIES or (
                    cuda and name.startswith("nvidia/") and "/lib/" in name and ".so" in name
                ):
                    extract(wheel, member, staging / "lib" / Path(name).name)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--print-path", action="store_true", help="print only the folder path")
    parser.add_argument("--force", action="store_true", help="fetch again even when present")
    parser.add_argument("--dest", type=Path, help="the libtorch folder [.libtorch/VERSION]")
    parser.add_argument("--cuda", action="store_true", help="the CUDA build (Linux, several GB)")
    arguments = parser.parse_args()

    if os.environ.get("LIBTORCH") and not arguments.dest:
        log(f"LIBTORCH is set to {os.environ['LIBTORCH']}; using it as it is")
        print(os.environ["LIBTORCH"])
        return 0

    final = (arguments.dest or ROOT / ".libtorch" / VERSION).resolve()
    home = final.parent
    stamp = sha256_of(WHEEL_LIST) + (" cuda" if arguments.cuda else "")
    stamp_path = final / STAMP
    if not arguments.force and stamp_path.exists() and stamp_path.read_text().strip() == stamp:
        if not arguments.print_path:
            log(f"libtorch {VERSION} is ready in {final}")
        print(final)
        return 0

    home.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".partial-", dir=home) as work:
        work = Path(work)
        wheels = download(work / "wheels", arguments.cuda)
        verify(wheels, arguments.cuda)
        staging = work / "libtorch"
        log("unpacking lib/ and include/")
        unpack(wheels, staging, arguments.cuda)
        (staging / "build-version").write_text(f"{VERSION}\n")
        (staging / STAMP).write_text(f"{stamp}\n")
        if final.exists():
            shutil.rmtree(final)
        staging.rename(final)

    log(f"libtorch {VERSION} is ready in {final}")
    print(final)
    return 0


if __name__ == "__main__":
    sys.exit(main())
