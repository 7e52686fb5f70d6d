"""An emulated Raspberry Pi (64-bit Raspberry Pi OS = Debian bookworm arm64) to run the Pi bundle in.

The root file system is built once with debootstrap and cached outside the repository, under a
name keyed by the requirements it holds (changing requirements-pi*.txt builds a new one). Its
Python packages are aarch64 wheels installed from this machine, so the root never needs a network
of its own. Commands run in it through ``chroot`` and qemu-user-static's binfmt handler.

Everything here needs root; :func:`emulation_problem` says why it cannot work on a machine.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from tests.debian import PI_EMULATION as DEBIAN_PACKAGES
from tests.debian import ensure_installed, missing

CACHE = Path(os.environ.get("RL_PIPELINE_PI_CACHE", "/var/cache/rl-pipeline"))
SUITE, ARCH = "bookworm", "arm64"
BINFMT = Path("/proc/sys/fs/binfmt_misc")
SITE = "opt/site"          # where the wheels go inside the root (PYTHONPATH)
COMPLETE = ".rl-pipeline-complete"


def emulation_problem() -> str | None:
    """Why an emulated Pi cannot be built here, or None."""
    if os.geteuid() != 0:
        return "building and entering a chroot needs root"
    if shutil.which("apt-get") is None and missing(DEBIAN_PACKAGES):
        return "not a Debian machine: no apt-get to install debootstrap and qemu-user-static"
    return None


def debian_mirror() -> str:
    """The Debian mirror this machine's apt uses (the root comes from the same place)."""
    sources = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for source in sources:
        if not source.is_file():
            continue
        for line in source.read_text().splitlines():
            words = line.split()
            for word in words:
                if word.startswith("http") and word.rstrip("/").endswith("/debian"):
                    if line.lstrip().startswith(("deb ", "URIs:")):
                        return word
    return "http://deb.debian.org/debian"


def install_debian_packages() -> None:
    ensure_installed(DEBIAN_PACKAGES)


@contextmanager
def aarch64_binfmt() -> Iterator[None]:
    """binfmt_misc mounted and qemu-aarch64 enabled; a mount made here is undone on exit."""
    mounted_here = False
    if not (BINFMT / "register").exists():
        subprocess.run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT)], check=True)
        mounted_here = True
    try:
        if not (BINFMT / "qemu-aarch64").exists():
            subprocess.run(["update-binfmts", "--enable", "qemu-aarch64"], check=True)
        yield
    finally:
        if mounted_here:
            subprocess.run(["umount", str(BINFMT)], check=False)


def root_key(requirements: list[Path]) -> str:
    digest = hashlib.sha256(f"{SUITE} {ARCH} python3.11".encode())
    for path in requirements:
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def build_root(requirements: list[Path], cache: Path = CACHE) -> Path:
    """The cached root for these requirements, built first if needed (about 4 minutes)."""
    root = cache / f"pi-root-{root_key(requirements)}"
    if (root / COMPLETE).exists():
        return root
    install_debian_packages()
    building = root.with_name(root.name + ".building")
    shutil.rmtree(building, ignore_errors=True)
    building.mkdir(parents=True)
    subprocess.run(["debootstrap", f"--arch={ARCH}", "--variant=minbase",
                    "--include=python3,ca-certificates", SUITE, str(building), debian_mirror()],
                   check=True, capture_output=True)
    for requirement in requirements:
        install_wheels(requirement, building / SITE)
    (building / COMPLETE).write_text("\n".join(p.name for p in requirements) + "\n")
    shutil.rmtree(root, ignore_errors=True)
    building.rename(root)
    return root


def install_wheels(requirements: Path, target: Path) -> None:
    """aarch64 CPython 3.11 wheels for ``requirements``, installed into ``target`` from here."""
    uv = shutil.which("uv") or str(Path(sys.executable).parent / "uv")
    subprocess.run([uv, "pip", "install", "--quiet", "--target", str(target),
                    "--python-platform", "aarch64-manylinux_2_28", "--python-version", "3.11",
                    "--only-binary", ":all:", "-r", str(requirements)],
                   check=True, capture_output=True, cwd=requirements.parent)


@contextmanager
def mounted_proc(root: Path) -> Iterator[None]:
    """/proc inside the root while commands run there (LiteRT reads the CPU's features from it)."""
    proc = root / "proc"
    proc.mkdir(exist_ok=True)
    subprocess.run(["mount", "-t", "proc", "proc", str(proc)], check=True)
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(proc)], check=False)


@contextmanager
def emulated_pi(requirements: list[Path]) -> Iterator[Path]:
    """A ready root (cached) with emulation on; mounts made for it are undone on exit."""
    install_debian_packages()
    with ExitStack() as stack:
        stack.enter_context(aarch64_binfmt())
        root = build_root(requirements)
        stack.enter_context(mounted_proc(root))
        yield root


def run_in_root(root: Path, command: list[str], timeout: float = 900) -> subprocess.CompletedProcess:
    """Run ``command`` inside the root with the wheels on the path (no network, no project code)."""
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "PYTHONPATH": f"/{SITE}", "HOME": "/root",
           "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1"}
    chroot = shutil.which("chroot") or "/usr/sbin/chroot"  # found on this machine's PATH, not env's
    return subprocess.run([chroot, str(root), *command], env=env, capture_output=True, text=True,
                          timeout=timeout)


if __name__ == "__main__":  # build (or find) the cached root: python -m tests.emulated_pi
    pi = Path(__file__).resolve().parents[1] / "pi"
    with emulated_pi([pi / "requirements-pi.txt", pi / "requirements-pi-gymnasium.txt"]) as built:
        print(built)
        print(run_in_root(built, ["python3", "-c", "import platform, numpy, gymnasium; "
                                  "from ai_edge_litert.interpreter import Interpreter; "
                                  "print(platform.machine(), numpy.__version__, gymnasium.__version__)"]))
