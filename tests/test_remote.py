"""The DVC remote: the repository's default remote (a folder beside the checkout), and a real SSH
remote through the dvc-ssh plugin, served by Debian's OpenSSH server on this machine's loopback.

The quick run's outputs are pushed from one workspace and pulled into a fresh clone that has
never run anything, which then has every output dvc.lock records (the Atari checkpoints
included: DVC caches them like models), a clean `dvc status`, and reproduces the run bit for bit (pipeline.reproduction). A pull from an empty remote or from a port where
no server listens fails and leaves the files already there as they were; pipeline.pull
names the outputs it could not get. (docs/remote.md)
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from configobj import ConfigObj

from pipeline.workspace import GIT_IDENTITY
from tests.conftest import DVC, REPO_ROOT, engine_locks, file_digests, run
from tests.debian import SSH_SERVER, ensure_installed

SSHD = Path(SSH_SERVER["openssh-server"])
START_TIMEOUT_S = 30
PULL_TIMEOUT_S = 300
REMOTE = "storage"  # the default remote's name in .dvc/config


# --- the repository's configuration (fast) ------------------------------------------------------


def test_the_default_remote_is_a_folder_outside_the_checkout():
    """A fresh clone pushes and pulls with no set-up: .dvc/config names a default remote whose
    URL, relative to .dvc/, leads out of the checkout; .dvc/config.local (credentials) is ignored."""
    config = ConfigObj(str(REPO_ROOT / ".dvc/config"))  # the format DVC reads and writes
    assert config["core"]["remote"] == REMOTE
    url = config[f'remote "{REMOTE}"']["url"]
    assert "://" not in url and not Path(url).is_absolute(), url
    storage = (REPO_ROOT / ".dvc" / url).resolve()
    assert not storage.is_relative_to(REPO_ROOT.resolve()), storage
    ignored = subprocess.run(["git", "check-ignore", "-q", ".dvc/config.local"], cwd=REPO_ROOT)
    assert ignored.returncode == 0, ".dvc/config.local is not ignored by git"


def test_push_and_pull_through_the_default_remote(tmp_path):
    """A tiny DVC project made with the repository's .dvc/config: push from one clone, pull into
    a second clone beside it, with no remote configured by hand; ``pipeline.pull`` too, and
    from an empty remote."""
    source = tmp_path / "source"
    source.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=source, check=True)
    shutil.copytree(REPO_ROOT / ".dvc", source / ".dvc",
                    ignore=shutil.ignore_patterns("tmp", "cache", "config.local"))
    (source / "model.bin").write_bytes(os.urandom(4096))
    run([DVC, "add", "model.bin"], source)
    subprocess.run(["git", "add", "-A"], cwd=source, check=True)
    subprocess.run(["git", *GIT_IDENTITY, "commit", "-q", "-m", "model"], cwd=source, check=True)
    run([DVC, "push"], source)
    assert any((tmp_path / "rl-pipeline-dvc-storage").rglob("*")), "nothing pushed beside the checkout"

    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(source), str(clone)], check=True)
    assert not (clone / "model.bin").exists()
    run([DVC, "pull"], clone)
    assert (clone / "model.bin").read_bytes() == (source / "model.bin").read_bytes()

    # The project's pull does the same, and names the output when the remote lacks it.
    for name, remote in (("second", None), ("third", tmp_path / "empty")):
        other = tmp_path / name
        subprocess.run(["git", "clone", "-q", str(source), str(other)], check=True)
        if remote is not None:
            remote.mkdir()
            use_remote(other, str(remote))
        pulled = run(["python", "-m", "pipeline.pull", "--dir", str(other)], REPO_ROOT, check=False)
        if remote is None:
            assert pulled.returncode == 0, pulled.stdout + pulled.stderr
            assert (other / "model.bin").read_bytes() == (source / "model.bin").read_bytes()
        else:
            assert pulled.returncode == 1 and "\n  model.bin: not on the remote" in pulled.stderr, pulled
            assert not (other / "model.bin").exists()


# --- an SSH server of our own -------------------------------------------------------------------


@dataclass
class SSHServer:
    port: int
    key: Path  # the client's private key, authorized for root

    def url(self, path: Path) -> str:
        return f"ssh://root@127.0.0.1:{self.port}{path}"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _answers(port: int) -> bool:
    """An SSH server answers on ``port`` of the loopback: its identification line arrives."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as connection:
            return connection.recv(64).startswith(b"SSH-")
    except OSError:
        return False


def _keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "rl-pipeline test", "-f", str(path)],
                   check=True)


@pytest.fixture(scope="module")
def ssh_server(tmp_path_factory) -> Iterator[SSHServer]:
    """Debian's sshd on a free loopback port, with a host key and a client key made here and a
    configuration of its own (key login for root only, SFTP in-process); stopped by its pid."""
    if os.geteuid() != 0:
        pytest.skip("the SSH server test logs in as root on its own sshd: it needs root")
    if not SSHD.exists() and shutil.which("apt-get") is None:
        pytest.fail("sshd is missing and apt-get is not available to install it")
    ensure_installed(SSH_SERVER, ["--no-install-recommends"])  # waits for the background install
    folder = tmp_path_factory.mktemp("sshd")
    _keygen(folder / "host_key")
    _keygen(folder / "client_key")
    shutil.copy(folder / "client_key.pub", folder / "authorized_keys")
    # sshd refuses to start without its privilege-separation folder (the package's init
    # scripts make it; nothing here runs them).
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    port = free_port()
    config = folder / "sshd_config"
    config.write_text("\n".join([
        f"Port {port}", "ListenAddress 127.0.0.1", f"HostKey {folder / 'host_key'}",
        f"PidFile {folder / 'sshd.pid'}", f"AuthorizedKeysFile {folder / 'authorized_keys'}",
        "PermitRootLogin prohibit-password", "PubkeyAuthentication yes", "PasswordAuthentication no",
        "KbdInteractiveAuthentication no", "UsePAM no",
        # The keys live under the temporary folder, which others may write to: sshd's ownership
        # check of every parent folder would refuse them.
        "StrictModes no",
        "Subsystem sftp internal-sftp", "LogLevel VERBOSE", ""]))
    log = (folder / "sshd.log").open("w")
    # -D: stay in the foreground (this process is sshd itself); -e: log to the log file.
    server = subprocess.Popen([str(SSHD), "-D", "-e", "-f", str(config)],
                              stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _answers(port):
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"sshd did not start on port {port}:\n{(folder / 'sshd.log').read_text()}")
            time.sleep(0.2)
        pid = int((folder / "sshd.pid").read_text())
        assert pid == server.pid
        yield SSHServer(port, folder / "client_key")
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()
    assert not Path(f"/proc/{server.pid}").exists(), "sshd still running"


# --- pushing the quick run, pulling it into a clone that never ran --------------------------------


def use_remote(workspace: Path, url: str, keyfile: Path | None = None) -> None:
    """Point the default remote at ``url`` for this clone alone (.dvc/config.local), as a user
    would for credentials."""
    run([DVC, "remote", "modify", "--local", REMOTE, "url", url], workspace)
    if keyfile is not None:
        run([DVC, "remote", "modify", "--local", REMOTE, "keyfile", str(keyfile)], workspace)


def committed_run(workspace: Path) -> Path:
    """``workspace`` with its run committed: the digests recorded, then dvc.lock, the digests
    and whatever else git does not ignore (results that DVC leaves to git) committed, as one
    commits a run to share it."""
    run(["python", "-m", "pipeline.reproduction", "record"], workspace)
    subprocess.run(["git", "add", "-A"], cwd=workspace, check=True)
    subprocess.run(["git", *GIT_IDENTITY, "commit", "-q", "-m", "the quick run"], cwd=workspace, check=True)
    return workspace


def fresh_clone(source: Path, target: Path) -> Path:
    """A git clone of ``source``: its code, params and dvc.lock, no output and no DVC cache."""
    subprocess.run(["git", "clone", "-q", str(source), str(target)], check=True)
    assert not (target / "data/policies").exists() and not (target / ".dvc/cache").exists()
    return target


def recorded_outputs(workspace: Path) -> list[str]:
    lock = yaml.safe_load((workspace / "dvc.lock").read_text())["stages"]
    return sorted(out["path"] for entry in lock.values() for out in entry.get("outs", []))


def files_under(workspace: Path) -> dict[str, bytes]:
    """Every file of the outputs' folders (data/, reports/), with its bytes."""
    return {str(f.relative_to(workspace)): f.read_bytes()
            for folder in ("data", "reports") if (workspace / folder).exists()
            for f in sorted((workspace / folder).rglob("*")) if f.is_file()}


@pytest.mark.system
def test_pull_over_ssh_into_a_fresh_clone_reproduces_the_run(quick_run, ssh_server, tmp_path):
    # The quick run, committed in a copy of its own, pushed to a folder on the SSH server.
    source = tmp_path / "source"
    shutil.copytree(quick_run, source, symlinks=True, ignore=engine_locks)
    committed_run(source)
    storage = tmp_path / "storage"
    use_remote(source, ssh_server.url(storage), ssh_server.key)
    pushed = run([DVC, "push"], source)
    assert "pushed" in pushed.stdout and any(storage.rglob("*")), pushed.stdout

    clone = fresh_clone(source, tmp_path / "clone")
    use_remote(clone, ssh_server.url(storage), ssh_server.key)
    run([DVC, "pull"], clone)

    # Every output dvc.lock records is there, as recorded (the Atari checkpoints too: they are
    # cached like models), so DVC's status is clean and a repro has nothing to run.
    outputs = recorded_outputs(clone)
    assert file_digests(clone, outputs) == file_digests(source, outputs)
    status = json.loads(run([DVC, "status", "--json"], clone).stdout or "{}")
    assert status == {}, status
    dry = run([DVC, "repro", "--dry"], clone)
    assert "Running stage" not in dry.stdout, dry.stdout

    # ... and the reproduction check finds every recorded stage reproduced.
    checked = run(["python", "-m", "pipeline.reproduction", "check"], clone)
    digests = yaml.safe_load((clone / "dvc.digests.yaml").read_text())["stages"]
    assert len(digests) == len(yaml.safe_load((clone / "dvc.lock").read_text())["stages"])
    assert checked.stdout.strip().splitlines()[-1] == f"{len(digests)} reproduced", checked.stdout


def _partly_pulled(source: Path, target: Path) -> tuple[Path, dict[str, bytes], list[str]]:
    """A fresh clone of ``source`` with its dvc.lock, holding one stage's outputs, copied in by
    hand (as after an earlier pull of that stage alone), the first of them edited since:
    (clone, its files, those outputs)."""
    clone = fresh_clone(source, target)
    shutil.copy(source / "dvc.lock", clone / "dvc.lock")
    lock = yaml.safe_load((clone / "dvc.lock").read_text())["stages"]
    present = [out["path"] for out in lock["markov_chain"]["outs"]]
    for path in present:
        (clone / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source / path, clone / path)
    edited = clone / present[0]
    edited.write_bytes(edited.read_bytes() + b"# a local edit\n")
    return clone, files_under(clone), present


@pytest.mark.system
@pytest.mark.parametrize("remote", ["empty folder", "closed port"])
def test_a_failed_pull_names_what_it_lacks_and_changes_nothing(quick_run, ssh_server, tmp_path, remote):
    clone, before, present = _partly_pulled(quick_run, tmp_path / "clone")
    if remote == "empty folder":
        empty = tmp_path / "empty-storage"
        empty.mkdir()
        use_remote(clone, str(empty))
    else:
        nobody = SSHServer(free_port(), ssh_server.key)  # a port where no server listens
        use_remote(clone, nobody.url(tmp_path / "storage"), nobody.key)

    # DVC's own pull fails without naming the outputs (hashes, or a count of files), and
    # changes nothing here.
    pulled = run([DVC, "pull"], clone, check=False, timeout=PULL_TIMEOUT_S)
    assert pulled.returncode != 0, pulled.stdout + pulled.stderr
    assert files_under(clone) == before, "dvc pull changed the files already there"

    # The project's pull names every output it could not get, and the edited one it kept.
    pulled = run(["python", "-m", "pipeline.pull"], clone, check=False, timeout=PULL_TIMEOUT_S)
    said = pulled.stdout + pulled.stderr
    assert pulled.returncode == 1, said
    lacking = [path for path in recorded_outputs(clone) if path not in present]
    unnamed = [path for path in lacking if f"\n  {path}: not " not in said]
    assert not unnamed, f"the failed pull does not name {unnamed}:\n{said}"
    assert f"\n  {present[0]}: kept as it is here" in said, said
    assert f"{len(lacking) + 1} outputs are not what dvc.lock records" in said, said
    assert files_under(clone) == before, "the project's pull changed the files already there"
