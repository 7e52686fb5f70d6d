"""Debian packages for the system tests, installed with apt-get one installer at a time.

apt-get stops with an error, rather than waiting, while another apt-get holds dpkg's lock or the
package lists' lock. The system tests (SLURM, Chromium, the emulated Pi) install what they miss
and may start at the same moment on different pytest-xdist workers, so every installer takes
:data:`APT_LOCK` first: :func:`apt_install` here, and .ci/slurm_cluster.sh with flock(1).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.conftest import exclusive

APT_LOCK = Path("/run/lock/rl-pipeline-apt.lock")


def apt_install(packages: list[str]) -> None:
    """Install ``packages``; the package lists are refreshed only when the first try fails."""
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", *packages]
    with exclusive(APT_LOCK):
        if subprocess.run(install, env=env, capture_output=True).returncode == 0:
            return
        for command in (["apt-get", "update", "-q"], install):
            done = subprocess.run(command, env=env, capture_output=True, text=True)
            if done.returncode != 0:
                raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}):\n"
                                   f"{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
