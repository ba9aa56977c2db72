"""Where a coordinator step waits for something other than its wave: an operator's approval
(`rollout.approval`, README.md#approvals) and a maintenance window (`rollout.windows`,
README.md#maintenance-windows).

An approval hold ends the step: the record says `awaiting-approval` and no step is in flight until
`planner.control` approves (or aborts). A closed window holds only its members: the step waits for
it when it opens within the invocation; otherwise the rollout is parked (still running, no step in
flight, `resume_at` set) and the sweep restarts it once the window has opened.
"""
from __future__ import annotations

from collections.abc import Sequence

from baseroll import log
from baseroll.contracts import events as E
from baseroll.contracts.messages import Step
from baseroll.contracts.records import AWAITING_APPROVAL, HALTED, RolloutRecord
from baseroll.rollout import events, gates, lease, windows
from baseroll.rollout.deps import Deps
from baseroll.rollout.waveplan import Header, Member


def held_for_approval(deps: Deps, rec: RolloutRecord, step: Step, header: Header) -> bool:
    """True when the step's wave waits for an approval: the rollout is now awaiting it (and told so)."""
    mode = deps.config.rollout.approval
    if not gates.needs_approval(mode, step.wave, len(header.sizes), rec.approved_waves):
        return False
    reason = gates.hold_reason(mode, step.wave, header.canary)
    log.notice("rollout.awaiting_approval", rollout_id=rec.rollout_id, wave=step.wave, approval=mode, reason=reason)
    if lease.finish(deps, rec, step, None, status=AWAITING_APPROVAL, reason=reason, wave=step.wave):
        events.publish(deps.bus, E.awaiting_approval(step.rollout, at=deps.clock.now(), seq=step.seq, wave=step.wave,
                                                     reason=reason, approval=mode))
    return True


def _places(held: Sequence[Member]) -> list[windows.Place]:
    return [windows.place(m.service, m.labels) for m in held]


def wait_for_window(deps: Deps, rec: RolloutRecord, step: Step, hold: lease.Lease, deadline: float,
                    held: Sequence[Member]) -> bool:
    """True once the first of `held`'s windows has opened, waited for in this invocation (before
    `deadline`, on the monotonic clock); False when the rollout was parked until then instead, or
    halted because none of their windows opens at all."""
    rules, clock = deps.config.rollout.windows, deps.clock
    reopen = windows.earliest_open(rules, _places(held), windows.at(clock.now()))
    names = f"{held[0].service}" + (f" and {len(held) - 1} more" if len(held) > 1 else "")
    if reopen is None:
        reason = f"wave {step.wave}: no maintenance window opens within {windows.SEARCH_DAYS} days for {names}"
        log.error("rollout.halted", rollout_id=rec.rollout_id, reason=reason)
        if lease.finish(deps, rec, step, None, status=HALTED, reason=reason, wave=step.wave):
            events.publish(deps.bus, E.halted(step.rollout, at=clock.now(), seq=step.seq, wave=step.wave, reason=reason,
                                              failures={m.service: "no maintenance window opens" for m in held}))
        return False
    wait_s = max(0.0, reopen.timestamp() - clock.now())
    if clock.monotonic() + wait_s + deps.config.rollout.poll_interval_s > deadline:
        first = windows.describe(rules, _places(held)[0], windows.at(clock.now()))
        reason = f"wave {step.wave}: {names} wait for a maintenance window ({first})"
        log.notice("rollout.parked", rollout_id=rec.rollout_id, wave=step.wave, held=len(held),
                   resume_at=reopen.isoformat(), reason=reason)
        lease.finish(deps, rec, step, None, reason=reason, wave=step.wave, resume_at=reopen.timestamp())
        return False
    log.info("wave.window_wait", rollout_id=rec.rollout_id, wave=step.wave, held=len(held), wait_s=round(wait_s, 1))
    until = clock.monotonic() + wait_s
    while clock.monotonic() < until:  # in slices, so the hold is renewed and an abort is seen
        hold.renew()
        clock.sleep(min(lease.HEARTBEAT_S, until - clock.monotonic()))
    return True
