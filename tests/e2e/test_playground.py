"""`make up` as a newcomer uses it: start the playground, copy the printed exports into a fresh
shell, run each printed command; then stop the playground by its PID."""
from __future__ import annotations

import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 180.0
# What each printed command must show (besides exit 0), by its first words.
EXPECTED = {
    "baseroll status": re.compile(r"fleet status"),
    "python -m infra.local.playground push-base": re.compile(r"pushed \S+/bases/python:3\.12 .*-> sha256:[0-9a-f]{64}"),
    "baseroll plan": re.compile(r"\d+ to roll in \d+ waves"),
    "baseroll publish": re.compile(r"^\d+$", re.M),  # the message id
    "baseroll roll": re.compile(r"python-[0-9a-f]{12}: finished"),
}


class Playground:
    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "infra.local.playground", "up", "--services", "12"],
                                     cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))

    def wait_ready(self) -> list[str]:
        """Everything printed up to the ready line."""
        out: list[str] = []
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=1.0)
            except queue.Empty:
                assert self.proc.poll() is None, "the playground exited:\n" + "\n".join(out)
                continue
            out.append(line)
            if line.startswith("# The playground is up"):
                return out
        raise TimeoutError("the playground did not come up:\n" + "\n".join(out))


@pytest.fixture
def playground() -> Iterator[Playground]:
    pg = Playground()
    try:
        yield pg
    finally:
        if pg.proc.poll() is None:  # the test failed before stopping it
            os.kill(pg.proc.pid, signal.SIGTERM)
            pg.proc.wait(timeout=60)


def parse(printed: list[str]) -> tuple[list[str], list[str]]:
    """(export lines, commands): the commands are the lines after '# Then try:' that are not comments."""
    exports = [line for line in printed if line.startswith("export ")]
    tried = printed[printed.index("# Then try:") + 1:]
    commands = [line for line in tried if line and not line.startswith("#")]
    return exports, commands


def in_fresh_shell(exports: list[str], command: str) -> subprocess.CompletedProcess:
    """`command` in bash with only the exports and PATH, from the checkout."""
    script = "\n".join([*exports, command])
    return subprocess.run(["bash", "-c", script], cwd=ROOT, env={"PATH": os.environ["PATH"]},
                          capture_output=True, text=True, timeout=300)


def listening(host_port: str) -> bool:
    host, _, port = host_port.rpartition(":")
    with socket.socket() as s:
        return s.connect_ex((host, int(port))) == 0


def wait_for(check, *, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(1.0)
    return False


def node_rolled(exports: list[str], digest: str) -> bool:
    """Every node service is on `digest`, the one just pushed (none was before the push)."""
    status = in_fresh_shell(exports, "baseroll --json status --base node")
    node = json.loads(status.stdout)[0]
    return (node["current_digest"] == digest and node["on_current"] > 0 and node["outdated"] == node["opted_out"]
            and node["in_flight"] == 0)


def test_printed_commands_work_in_a_fresh_shell(playground):
    printed = playground.wait_ready()
    exports, commands = parse(printed)
    names = {line.split("=", 1)[0].removeprefix("export ") for line in exports}
    assert {"BASEROLL_CONFIG", "PUBSUB_EMULATOR_HOST", "GOOGLE_CLOUD_PROJECT"} <= names, exports
    assert set(EXPECTED) <= {next((k for k in EXPECTED if c.startswith(k)), "") for c in commands}, commands

    for command in commands:
        proc = in_fresh_shell(exports, command)
        assert proc.returncode == 0, f"{command}\n{proc.stdout}\n{proc.stderr}"
        expected = next((pattern for start, pattern in EXPECTED.items() if command.startswith(start)), None)
        if expected is not None:
            assert expected.search(proc.stdout), f"{command}\n{proc.stdout}"

    # After the printed roll, the python track's eligible services are on its current digest.
    status = in_fresh_shell(exports, "baseroll --json status --base python")
    assert status.returncode == 0 and status.stderr == "", status.stderr
    python = json.loads(status.stdout)[0]
    assert python["on_current"] > 0 and python["outdated"] == python["opted_out"] and python["failed"] == 0

    # push-base --notify: Artifact Registry's event reaches the functions, which roll node by themselves.
    pushed = in_fresh_shell(exports, "python -m infra.local.playground push-base node --notify")
    assert pushed.returncode == 0 and "published Artifact Registry's push event" in pushed.stdout, pushed.stderr
    digest = re.search(r"-> (sha256:[0-9a-f]{64})", pushed.stdout).group(1)
    assert wait_for(lambda: node_rolled(exports, digest), timeout=120), "the pushed node base was not rolled"

    emulator = next(line for line in exports if line.startswith("export PUBSUB_EMULATOR_HOST="))
    os.kill(playground.proc.pid, signal.SIGTERM)
    assert playground.proc.wait(timeout=60) == 0
    assert not listening(emulator.split("=", 1)[1]), "the playground's Pub/Sub stand-in still listens"
