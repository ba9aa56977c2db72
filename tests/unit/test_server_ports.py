"""Where the local stack's servers and revisions take their ports: outside the kernel's ephemeral range
(infra/local/procs.py)."""
from __future__ import annotations

from pathlib import Path

import pytest

from infra.local.procs import ephemeral_range, server_range


def test_the_ephemeral_range_is_read_from_the_kernel_file_else_linuxs_default(tmp_path: Path) -> None:
    (tmp_path / "range").write_text("10000\t20000\n")
    assert ephemeral_range(tmp_path / "range") == (10000, 20000)
    (tmp_path / "bad").write_text("10000\n")
    assert ephemeral_range(tmp_path / "bad") == (32768, 60999)
    assert ephemeral_range(tmp_path / "missing") == (32768, 60999)


@pytest.mark.parametrize(("ephemeral", "expected"), [
    ((32768, 60999), range(20768, 32768)),  # Linux's default: just below it
    ((5000, 60999), range(1024, 5000)),  # little room below: what there is, unprivileged
    ((1500, 60000), range(60001, 65536)),  # no room below: above it
    ((1024, 63000), range(63001, 65536)),
])
def test_server_ports_lie_outside_the_ephemeral_range(ephemeral: tuple[int, int], expected: range) -> None:
    assert server_range(ephemeral) == expected


def test_no_room_on_either_side_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="no room for server ports"):
        server_range((1500, 65000))
