"""Approval gates (rollout/gates.py): which wave waits, and what `approve` does to a record."""
from __future__ import annotations

import pytest
from baseroll.contracts.records import (
    ABORTED,
    AWAITING_APPROVAL,
    FINISHED,
    HALTED,
    RUNNING,
    STATUSES,
    TERMINAL,
    RolloutRecord,
)
from baseroll.rollout import gates


@pytest.mark.parametrize("mode, wave, count, approved, expected", [
    ("none", 0, 4, [], False),
    ("none", 1, 4, [], False),
    ("after-canary", 0, 4, [], False),
    ("after-canary", 1, 4, [], True),
    ("after-canary", 1, 4, [1], False),  # approved once: a redelivered or restarted step goes on
    ("after-canary", 2, 4, [1], False),
    ("after-canary", 0, 1, [], False),   # a one-wave rollout has no wave after the canary
    ("every-wave", 0, 3, [], True),      # nothing is written before an approval
    ("every-wave", 2, 3, [0, 1], True),
    ("every-wave", 2, 3, [0, 1, 2], False),
])
def test_needs_approval(mode, wave, count, approved, expected):
    assert gates.needs_approval(mode, wave, count, approved) is expected


def test_hold_reason_names_the_gate():
    assert gates.hold_reason("after-canary", 1, True) == \
        "awaiting approval before wave 1: the canary wave settled (rollout.approval: after-canary)"
    assert "wave 0 settled" in gates.hold_reason("after-canary", 1, False)
    assert gates.hold_reason("every-wave", 3, True) == "awaiting approval before wave 3 (rollout.approval: every-wave)"


def record(status: str, wave: int = 1, approved: list[int] | None = None) -> RolloutRecord:
    return RolloutRecord("py-0123456789ab", "py", "sha256:" + "1" * 64, status=status, wave=wave,
                         approved_waves=list(approved or []))


def test_approve_a_waiting_rollout_runs_its_wave():
    decided = gates.approve(record(AWAITING_APPROVAL, wave=2, approved=[1]))
    assert decided == gates.Approval(2, {"status": RUNNING, "reason": "approved wave 2", "approved_waves": [1, 2]})


@pytest.mark.parametrize("status, approved, reason, already", [
    (RUNNING, [1], "wave 1 was already approved", True),  # the same approve request delivered twice
    (RUNNING, [], "not awaiting approval (status running)", False),
    (HALTED, [], "not awaiting approval (status halted)", False),  # a halt needs `resume`, not `approve`
    (ABORTED, [1], "not awaiting approval (status aborted)", False),
    (FINISHED, [], "not awaiting approval (status finished)", False),
])
def test_approve_refuses_what_is_not_waiting(status, approved, reason, already):
    assert gates.approve(record(status, approved=approved)) == gates.Refusal(reason, already)


def test_awaiting_approval_is_a_status_but_not_terminal():
    assert AWAITING_APPROVAL in STATUSES and AWAITING_APPROVAL not in TERMINAL
    assert set(TERMINAL) < set(STATUSES)
    fresh = RolloutRecord("r", "t", "d")
    assert (fresh.approved_waves, fresh.resume_at) == ([], 0.0)
