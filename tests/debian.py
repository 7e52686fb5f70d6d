"""Debian packages for the system tests, installed with apt-get one installer at a time.

apt-get stops with an error, rather than waiting, while another apt-get holds dpkg's lock or the
package lists' lock. The system tests (SLURM, Chromium, the emulated Pi, the SSH server) install
what they miss and may start at the same moment on different pytest-xdist workers, so every
installer takes :data:`APT_LOCK` first: :func:`ensure_installed` here, and
.ci/slurm_cluster.sh with flock(1).

On a fresh machine (CI's) these installs are downloads and dpkg runs that each test would
wait through when it first needs them; :func:`install_in_background` starts them all at the
start of the session instead, while the quick run is being built, so the tests find them done.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from tests.conftest import exclusive

APT_LOCK = Path("/run/lock/rl-pipeline-apt.lock")

# What each system test installs when missing (package -> a file it installs), and the fixture
# that needs it. Installed with recommends except SLURM (as .ci/slurm_cluster.sh installs it).
PI_EMULATION = {"debootstrap": "/usr/sbin/debootstrap", "qemu-user-static": "/usr/bin/qemu-aarch64-static",
                "binfmt-support": "/usr/sbin/update-binfmts"}
SLURM = {"slurm-wlm": "/usr/sbin/slurmctld", "munge": "/usr/sbin/munged"}
BROWSER = {"chromium": "/usr/bin/chromium"}
SSH_SERVER = {"openssh-server": "/usr/sbin/sshd"}  # without recommends (they bring systemd)
NEEDED_BY = (("emulated_root", PI_EMULATION, []), ("slurm_cluster", SLURM, ["--no-install-recommends"]),
             ("chromium", BROWSER, []), ("ssh_server", SSH_SERVER, ["--no-install-recommends"]))


def missing(packages: dict[str, str]) -> list[str]:
    """The names in ``packages`` (name -> a file it installs) whose file is not there."""
    return [name for name, path in packages.items() if not Path(path).exists()]


def ensure_installed(packages: dict[str, str], options: list[str] | None = None) -> None:
    """Install those of ``packages`` (name -> a file it installs) whose file is missing, with
    apt-get's ``options`` (as :data:`NEEDED_BY` gives them). The check
    is made under :data:`APT_LOCK` too, so that a package another installer is still unpacking
    (its file there, dpkg not done) is waited for; the package lists are refreshed only when the
    first try fails."""
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    with exclusive(APT_LOCK):
        absent = missing(packages)
        if not absent:
            return
        install = ["apt-get", "install", "-y", "-q", *(options or []), *absent]
        if subprocess.run(install, env=env, capture_output=True).returncode == 0:
            return
        for command in (["apt-get", "update", "-q"], install):
            done = subprocess.run(command, env=env, capture_output=True, text=True)
            if done.returncode != 0:
                raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}):\n"
                                   f"{done.stdout[-2000:]}\n{done.stderr[-2000:]}")


def install_in_background(fixtures: set[str], log: Path) -> subprocess.Popen | None:
    """Start installing, in a background process, the missing packages of every fixture in
    ``fixtures`` that needs some (:data:`NEEDED_BY`): one apt-get per fixture, in that order, each
    under :data:`APT_LOCK`, so a test that needs a package before it is done waits for it as it
    would wait for another installer. None when nothing is missing or this machine cannot install
    (not root, no apt-get). A failure here costs nothing: each fixture still installs what it
    misses, and reports the error. The caller waits for the process before the session ends
    (an apt-get cut short leaves dpkg half-configured)."""
    if os.geteuid() != 0 or shutil.which("apt-get") is None or shutil.which("flock") is None:
        return None
    steps = []
    for fixture, packages, options in NEEDED_BY:
        absent = missing(packages)
        if fixture in fixtures and absent:
            install = " ".join(["apt-get", "install", "-y", "-q", *options, *absent])
            steps.append(f"flock {APT_LOCK} sh -c '{install} || (apt-get update -q && {install})'")
    if not steps:
        return None
    APT_LOCK.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as output:
        return subprocess.Popen(["sh", "-c", "; ".join(steps)], stdout=output, stderr=subprocess.STDOUT,
                                env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"}, start_new_session=True)
