"""
Commands that start a Python program as several ranks on this machine, for the
multi-process tests. The launchers are looked for beside sys.executable (where pip puts
mpich's mpiexec and torch's torchrun), then on PATH; a test skips when one is missing.
"""

import os
import shutil
import socket
import subprocess
import sys

import pytest

BIN_DIR = os.path.dirname(sys.executable)


def find_launcher(name: str) -> str:
    """The path of ``mpiexec`` or ``torchrun``; skips the calling test when there is none."""
    path = os.path.join(BIN_DIR, name)
    if os.path.exists(path):
        return path
    found = shutil.which(name)
    if found is None:
        pytest.skip(f"{name} not found beside {sys.executable} or on PATH")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mpiexec_command(python_args: list[str], nproc: int = 2) -> list[str]:
    """``mpiexec -n nproc python *python_args``, with the flags local runs need."""
    mpiexec = find_launcher("mpiexec")
    version = subprocess.run([mpiexec, "--version"], capture_output=True, text=True, timeout=30).stdout
    if "Open MPI" in version or "OpenRTE" in version:
        flags = ["--oversubscribe", "--allow-run-as-root"]
    else:  # MPICH's hydra: start ranks as local processes, no ssh
        flags = ["-launcher", "fork"]
    return [mpiexec, *flags, "-n", str(nproc), sys.executable, *python_args]


def torchrun_command(python_args: list[str], nproc: int = 2) -> list[str]:
    """``torchrun --nproc_per_node nproc *python_args`` on a free local port."""
    return [
        find_launcher("torchrun"), "--nproc_per_node", str(nproc), "--master_addr", "127.0.0.1",
        "--master_port", str(free_port()), *python_args,
    ]  # fmt: skip


def multi_rank_command(launcher: str, python_args: list[str], nproc: int = 2) -> list[str]:
    """The command for launcher "mpiexec" or "torchrun"."""
    if launcher == "mpiexec":
        return mpiexec_command(python_args, nproc)
    if launcher == "torchrun":
        return torchrun_command(python_args, nproc)
    raise ValueError(f"unknown launcher {launcher!r}: expected 'mpiexec' or 'torchrun'")
