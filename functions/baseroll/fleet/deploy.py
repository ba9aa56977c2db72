"""One service, one target: update by digest, gate on health, roll back on failure.

This is the unit a worker applies; it is safe to repeat (a service already on its target is
left alone, a target that failed here once is never tried again) and never leaves a service on a
failed revision while a rollback is possible.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal, Mapping

from baseroll import log
from baseroll.clock import Clock
from baseroll.contracts import ledger
from baseroll.fleet import health, traffic, verification
from baseroll.fleet.traffic import PinnedTraffic
from baseroll.fleet.verification import Check, Finding
from baseroll.fleet.view import (
    Fleet,
    FleetError,
    ServiceView,
    StaleService,
    TrafficSplit,
)

MAX_STALE_RETRIES = 3
POLL_INTERVAL_S = 0.5

# Why a task leaves its service alone because someone else changed it between planning and the
# update (decided here, below the rollout; `rollout.policy` re-exports it).
CHANGED_SINCE_PLANNING = "changed since planning"
# Why a failed target is not rolled back: someone else changed the watched containers while it was
# gated, and a rollback would replace their change (decided here; `rollout.policy` re-exports it).
CHANGED_DURING_GATE = ledger.CHANGED_DURING_GATE


@dataclass(frozen=True)
class Target:
    """Container index → image by digest, and → base_image_uri by digest."""

    images: Mapping[int, str] = field(default_factory=dict)
    base_uris: Mapping[int, str] = field(default_factory=dict)

    def reached(self, svc: ServiceView) -> bool:
        return (all(i < len(svc.images) and svc.images[i] == v for i, v in self.images.items())
                and all(i < len(svc.base_image_uris) and svc.base_image_uris[i] == v for i, v in self.base_uris.items()))

    def indexes(self) -> set[int]:
        return {*self.images, *self.base_uris}


# What applying a target did (a Result's outcome). Not the ledger's states: `ledger.ROLLED_BACK` is
# what the service records, "rolled-back" here is what this one attempt reports.
OutcomeName = Literal["updated", "already-current", "rolled-back", "rollback-failed", "failed", "skipped"]
FAILED_OUTCOMES: frozenset[OutcomeName] = frozenset({"rolled-back", "rollback-failed", "failed"})


@dataclass(frozen=True)
class Outcome:
    service: str
    result: OutcomeName
    before: tuple[str, ...]
    after: tuple[str, ...]
    reason: str = ""


def _containers(svc: ServiceView, indexes: set[int]) -> tuple[tuple[str, str], ...]:
    uris = svc.base_image_uris
    return tuple((svc.images[i], uris[i] if i < len(uris) else "") for i in sorted(indexes) if i < len(svc.images))


def changed_since_planning(planned: ServiceView, now: ServiceView, indexes: set[int]) -> str | None:
    """Why not to update `now`: its watched containers differ from what the task was planned on."""
    return CHANGED_SINCE_PLANNING if _containers(now, indexes) != _containers(planned, indexes) else None


def _wait_settled(fleet: Fleet, svc: ServiceView, deadline: float,
                  clock: Clock) -> tuple[ServiceView, health.Health]:
    """Poll until the service is ready or failed, or the deadline passes (then: failed, timed out)."""
    verdict = health.assess(svc)
    while verdict.state == "pending":
        if clock.monotonic() >= deadline:
            return svc, health.Health("failed", "readiness deadline passed")
        clock.sleep(POLL_INTERVAL_S)
        svc = fleet.get_service(svc.name)
        verdict = health.assess(svc)
    return svc, verdict


def apply(fleet: Fleet, planned: ServiceView, target: Target, *, rollout: str, base_digest: str,
          timeout_s: float, clock: Clock, pinned_traffic: PinnedTraffic = "follow",
          check: Check | None = None) -> Outcome:
    """Move `planned`'s containers to `target`: the update and its gate take at most `timeout_s`,
    a rollback and its gate at most `timeout_s` more (config checks both fit one invocation). With
    a `check`, the new revision is verified at zero traffic before any traffic reaches it
    (`fleet.verification`); its requests and the traffic write after it take the time config counts."""
    svc = planned
    watched = target.indexes()
    for attempt in range(MAX_STALE_RETRIES + 1):
        refused = ledger.already_rolled_back(svc.annotations, base_digest)
        if refused:
            # This target already failed here and was rolled back: never try it a second time, but
            # finish a rollback that died holding the traffic pinned by name.
            _finish_restore(fleet, svc, rollout, timeout_s, clock)
            return Outcome(svc.name, "skipped", planned.images, svc.images, refused)
        if target.reached(svc):
            return _on_target(fleet, planned, svc, target, rollout, base_digest, timeout_s, clock, check)
        changed = changed_since_planning(planned, svc, watched)
        if changed:
            return Outcome(svc.name, "skipped", planned.images, svc.images, changed)
        moves = traffic.plan(svc, _images_after(svc, target), pinned_traffic)
        if moves.skip:
            log.info("service.traffic_skipped", service=svc.name, reason=moves.skip, rollout_id=rollout)
            return Outcome(svc.name, "skipped", planned.images, svc.images, moves.skip)
        try:
            during = verification.during_check(svc, traffic.revision_name(svc, _images_after(svc, target))) \
                if check else None
            if check and during:
                return _update_and_verify(fleet, svc, target, during, check, rollout, base_digest, timeout_s, clock)
            return _update_and_gate(fleet, svc, target, moves, rollout, base_digest, timeout_s, clock)
        except StaleService:
            log.info("service.stale", service=svc.name, attempt=attempt + 1)
            svc = fleet.get_service(planned.name)
    return Outcome(svc.name, "failed", planned.images, svc.images, "service kept changing (etag conflicts)")


def _images_after(svc: ServiceView, target: Target) -> tuple[str, ...]:
    return tuple(target.images.get(i, image) for i, image in enumerate(svc.images))


def _on_target(fleet: Fleet, planned: ServiceView, svc: ServiceView, target: Target, rollout: str,
               base_digest: str, timeout_s: float, clock: Clock, check: Check | None) -> Outcome:
    """A redelivered task, or a concurrent worker got here first: never a second update."""
    svc, verdict = _wait_settled(fleet, svc, clock.monotonic() + timeout_s, clock)
    before = _recorded_before(svc, rollout, base_digest)
    checking = before is not None and svc.annotations.get(ledger.STATE) == ledger.VERIFYING
    if verdict.state == "ready" and checking:
        # A worker died during the check at zero traffic: check again (requests only), then finish.
        return _verify(fleet, svc, before, target, check, rollout, base_digest, timeout_s, clock)
    if verdict.state == "ready":
        return Outcome(svc.name, "already-current", planned.images, svc.images, "already on the target")
    if before is None:
        return Outcome(svc.name, "failed", planned.images, svc.images, f"on the target but {verdict.reason}")
    # A worker died between a failed revision and its rollback: finish the rollback.
    log.warning("service.unhealthy", service=svc.name, reason=verdict.reason, recovered=True)
    if checking:
        return _roll_back_checked(fleet, svc, before, target, rollout, base_digest, verdict.reason, timeout_s, clock)
    restore = (before.traffic, svc.traffic) if svc.annotations.get(ledger.PREVIOUS_TRAFFIC) else None
    return _roll_back(fleet, svc, before, target, rollout, base_digest, verdict.reason, timeout_s, clock, restore)


def _recorded_before(svc: ServiceView, rollout: str, base_digest: str) -> ServiceView | None:
    """The service as it was before this rollout updated it, from the ledger; None if we did not."""
    ann = svc.annotations
    if ann.get(ledger.ROLLOUT_ID) != rollout or ann.get(ledger.BASE_DIGEST) != base_digest \
            or ann.get(ledger.STATE) not in (ledger.ROLLED, ledger.VERIFYING):
        return None
    images, uris = ledger.previous(ann)
    if len(images) != len(svc.images):
        return None
    before_traffic = traffic.from_json(ann.get(ledger.PREVIOUS_TRAFFIC, "")) or svc.traffic
    return ServiceView(name=svc.name, images=images, base_image_uris=uris or svc.base_image_uris,
                       traffic=before_traffic)


def _update_and_gate(fleet: Fleet, svc: ServiceView, target: Target, moves: traffic.Plan, rollout: str,
                     base_digest: str, timeout_s: float, clock: Clock) -> Outcome:
    deadline = clock.monotonic() + timeout_s
    before = svc
    annotations = ledger.rolled(rollout, base_digest, svc.images, svc.base_image_uris, traffic_note=moves.note,
                                previous_traffic=traffic.to_json(svc.traffic) if moves.traffic else None)
    try:
        after = fleet.update_images(svc, target.images, base_uris=target.base_uris, timeout=timeout_s,
                                    annotations=annotations, traffic=moves.traffic, revision=moves.revision)
    except FleetError as exc:
        log.error("service.update_failed", service=svc.name, reason=str(exc))
        return Outcome(svc.name, "failed", svc.images, svc.images, str(exc))
    after, verdict = _wait_settled(fleet, after, deadline, clock)
    if not target.reached(after):  # someone else's deploy landed during the gate and settled
        return _leave_to_other_writer(fleet, after, before, rollout, base_digest,
                                      verdict.reason or "our revision was replaced", deadline - clock.monotonic())
    if verdict.state == "ready":
        log.notice("service.updated", service=svc.name, before=list(before.images), after=list(after.images),
                   base_image_uris=[u for u in after.base_image_uris if u] or None,
                   revision=after.latest_ready_revision, rollout_id=rollout, traffic=moves.note or None)
        return Outcome(svc.name, "updated", before.images, after.images, moves.note)
    log.warning("service.unhealthy", service=svc.name, reason=verdict.reason, revision=after.latest_created_revision)
    restore = (before.traffic, moves.traffic) if moves.traffic else None
    return _roll_back(fleet, after, before, target, rollout, base_digest, verdict.reason, timeout_s, clock, restore)


def _roll_back(fleet: Fleet, svc: ServiceView, previous: ServiceView, target: Target, rollout: str,
               base_digest: str, reason: str, timeout_s: float, clock: Clock,
               restore_traffic: tuple[tuple[TrafficSplit, ...], tuple[TrafficSplit, ...]] | None, *,
               finding: Finding | None = None, then: tuple[TrafficSplit, ...] | None = None) -> Outcome:
    """Restore `previous`'s watched containers, only while they still hold `target` (our change);
    `restore_traffic` is (the traffic to write, the traffic we wrote): put back only if still ours;
    `then`, the traffic to write once the restored revision is ready (a verified roll's T)."""
    deadline = clock.monotonic() + timeout_s
    indexes = target.indexes()
    restore = Target({i: previous.images[i] for i in indexes},
                     {i: previous.base_image_uris[i] for i in indexes if i < len(previous.base_image_uris)})
    restored = svc
    for _ in range(MAX_STALE_RETRIES + 1):
        if not target.reached(svc):
            return _leave_to_other_writer(fleet, svc, previous, rollout, base_digest, reason,
                                          max(deadline - clock.monotonic(), 0.0))
        old_traffic = restore_traffic[0] if restore_traffic and svc.traffic == restore_traffic[1] else None
        held = traffic.to_json(old_traffic) if then is not None and old_traffic is not None else None
        annotations = ledger.rolled_back(rollout, base_digest, reason, pinned_traffic=held,
                                         verify=f"failed: {finding.detail}" if finding else None)
        try:
            restored = fleet.update_images(svc, restore.images, base_uris=restore.base_uris, annotations=annotations,
                                           timeout=max(deadline - clock.monotonic(), 0.0), traffic=old_traffic)
            break
        except StaleService:
            svc = fleet.get_service(svc.name)
        except FleetError as exc:
            log.error("service.rollback_failed", service=svc.name, reason=str(exc), failed_reason=reason)
            return Outcome(svc.name, "rollback-failed", previous.images, svc.images, f"{reason}; rollback: {exc}")
    else:
        return Outcome(svc.name, "rollback-failed", previous.images, svc.images, f"{reason}; rollback: etag conflicts")
    restored, verdict = _wait_settled(fleet, restored, deadline, clock)
    if verdict.state != "ready":
        log.error("service.rollback_failed", service=svc.name, reason=verdict.reason, failed_reason=reason)
        return Outcome(svc.name, "rollback-failed", previous.images, restored.images,
                       f"{reason}; rollback: {verdict.reason}")
    if held is not None and then is not None:
        _restore_traffic(fleet, restored, then, rollout, max(deadline - clock.monotonic(), 1.0))
    log.warning("service.rolled_back", service=svc.name, reason=reason, image=list(restored.images),
                revision=restored.latest_ready_revision, rollout_id=rollout)
    return Outcome(svc.name, "rolled-back", previous.images, restored.images, reason)


def _leave_to_other_writer(fleet: Fleet, svc: ServiceView, previous: ServiceView, rollout: str, base_digest: str,
                           reason: str, timeout: float) -> Outcome:
    """Someone else changed the watched containers while our target was gated: keep their change,
    record it in the ledger (an annotation-only write: no new revision) and report it."""
    why = f"{CHANGED_DURING_GATE}: {reason}"
    log.warning("service.changed_during_gate", service=svc.name, reason=why, image=list(svc.images),
                rollout_id=rollout)
    try:
        fleet.update_images(svc, {}, annotations=ledger.changed_by_someone_else(rollout, base_digest, reason),
                            timeout=timeout)
    except (StaleService, FleetError) as exc:  # the result and the log still carry it
        log.warning("service.ledger_not_written", service=svc.name, reason=str(exc), rollout_id=rollout)
    return Outcome(svc.name, "failed", previous.images, svc.images, why)


def roll_back_own(fleet: Fleet, svc: ServiceView, target: Target, *, rollout: str, base_digest: str, reason: str,
                  timeout_s: float, clock: Clock) -> Outcome:
    """Undo this rollout's update of `svc` after a check made outside `apply` failed (a job's
    verification execution, fleet/workload_deploy.py): the previous containers come from the ledger,
    so only an update the ledger shows as this rollout's is undone, with the same rules as above."""
    before = _recorded_before(svc, rollout, base_digest)
    if before is None:
        return Outcome(svc.name, "failed", svc.images, svc.images,
                       f"{reason}; not rolled back: the ledger does not show this rollout's update")
    return _roll_back(fleet, svc, before, target, rollout, base_digest, reason, timeout_s, clock, None)


# ---------------------------------------------------------------- verify at zero traffic

# The traffic write after a passed check, and its settling (a traffic-only change: no revision);
# config counts it in the invocation's budget (`config.rollout.VERIFY_WRITE_S`, the same figure).
TRAFFIC_WRITE_S = 15.0


def _update_and_verify(fleet: Fleet, svc: ServiceView, target: Target, during: tuple[TrafficSplit, ...],
                       check: Check, rollout: str, base_digest: str, timeout_s: float, clock: Clock) -> Outcome:
    """Deploy the new revision at 0 % under the tag, the traffic pinned by name; gate it; verify it."""
    deadline = clock.monotonic() + timeout_s
    new_revision = during[-1].revision
    note = f"verifying at 0%: {traffic.describe(during)}"
    annotations = {**ledger.rolled(rollout, base_digest, svc.images, svc.base_image_uris, traffic_note=note,
                                   previous_traffic=traffic.to_json(verification.without_tag(svc.traffic)),
                                   state=ledger.VERIFYING),
                   ledger.REPLACED_REVISION: traffic.short(svc.latest_ready_revision), ledger.VERIFY: "pending"}
    try:
        after = fleet.update_images(svc, target.images, base_uris=target.base_uris, timeout=timeout_s,
                                    annotations=annotations, traffic=during, revision=new_revision)
    except FleetError as exc:
        log.error("service.update_failed", service=svc.name, reason=str(exc))
        return Outcome(svc.name, "failed", svc.images, svc.images, str(exc))
    after, verdict = _wait_settled(fleet, after, deadline, clock)
    before = dataclasses.replace(svc, traffic=verification.without_tag(svc.traffic))
    if not target.reached(after):
        return _leave_to_other_writer(fleet, after, before, rollout, base_digest,
                                      verdict.reason or "our revision was replaced", deadline - clock.monotonic())
    if verdict.state != "ready":
        log.warning("service.unhealthy", service=svc.name, reason=verdict.reason, revision=after.latest_created_revision)
        return _roll_back_checked(fleet, after, before, target, rollout, base_digest, verdict.reason, timeout_s, clock)
    return _verify(fleet, after, before, target, check, rollout, base_digest, timeout_s, clock)


def _verify(fleet: Fleet, svc: ServiceView, before: ServiceView, target: Target, check: Check | None,
            rollout: str, base_digest: str, timeout_s: float, clock: Clock) -> Outcome:
    """Send the check to the tag's URL; pass: give the service its traffic back, naming the new
    revision; fail: roll back. `check` None: verification was turned off since (an opt-out label)."""
    url = svc.tag_uris.get(verification.VERIFY_TAG, "")
    if check is None:
        finding = Finding(True, "not verified: verification is off for this service now")
    elif not url:
        finding = Finding(False, f"no URL for the tag {verification.VERIFY_TAG} in traffic_statuses")
    else:
        finding = verification.check(check.prober, url, svc.uri, check.probe)
    if not finding.passed:
        reason = f"verification failed: {finding.detail}"
        log.warning("service.verify_failed", service=svc.name, reason=reason, url=url, rollout_id=rollout,
                    revision=svc.latest_ready_revision)
        return _roll_back_checked(fleet, svc, before, target, rollout, base_digest, reason, timeout_s, clock, finding)
    replaced = svc.annotations.get(ledger.REPLACED_REVISION, "")
    final = verification.after_pass(before.traffic, replaced, traffic.short(svc.latest_ready_revision))
    note = f"verified, traffic restored: {traffic.describe(before.traffic)} -> {traffic.describe(final)}"
    done = ledger.verified(f"passed: {finding.detail}", note)
    try:
        svc = fleet.update_images(svc, {}, annotations=done, traffic=final, timeout=TRAFFIC_WRITE_S)
    except StaleService:  # someone changed the traffic during the check: keep theirs, record the pass
        note = "verified; traffic changed by someone else during the check, kept as they made it"
        svc = fleet.update_images(fleet.get_service(svc.name), {}, annotations=ledger.verified(
            f"passed: {finding.detail}", note), timeout=TRAFFIC_WRITE_S)
    svc, _ = _wait_settled(fleet, svc, clock.monotonic() + TRAFFIC_WRITE_S, clock)
    log.notice("service.updated", service=svc.name, before=list(before.images), after=list(svc.images),
               revision=svc.latest_ready_revision, rollout_id=rollout, verified=finding.detail, traffic=note)
    return Outcome(svc.name, "updated", before.images, svc.images, f"{finding.detail}; {note}")


def _roll_back_checked(fleet: Fleet, svc: ServiceView, before: ServiceView, target: Target, rollout: str,
                       base_digest: str, reason: str, timeout_s: float, clock: Clock,
                       finding: Finding | None = None) -> Outcome:
    """Roll back a revision deployed for a check: the template back with the check's pins (no tag),
    then the traffic the service had once the restored revision is ready."""
    held = verification.held_for_rollback(svc.traffic)
    then = before.traffic if held != before.traffic else None
    return _roll_back(fleet, svc, before, target, rollout, base_digest, reason, timeout_s, clock,
                      (held, svc.traffic), finding=finding, then=then)


def _restore_traffic(fleet: Fleet, svc: ServiceView, to: tuple[TrafficSplit, ...], rollout: str,
                     timeout: float) -> None:
    """The last step of a rollback after a check: the traffic as it was (LATEST again), the pins gone."""
    try:
        fleet.update_images(svc, {}, annotations={ledger.PINNED_TRAFFIC: ""}, traffic=to, timeout=timeout)
    except (StaleService, FleetError) as exc:  # the pins still serve the old revision; the log says so
        log.error("service.traffic_not_restored", service=svc.name, reason=str(exc), rollout_id=rollout,
                  traffic=traffic.describe(svc.traffic), wanted=traffic.describe(to))


def _finish_restore(fleet: Fleet, svc: ServiceView, rollout: str, timeout_s: float, clock: Clock) -> None:
    """A rollback after a check whose worker died before the last write: write it, if the traffic is
    still the pins it left (else someone changed it since, and theirs stays)."""
    ann = svc.annotations
    pinned = traffic.from_json(ann.get(ledger.PINNED_TRAFFIC, ""))
    before = traffic.from_json(ann.get(ledger.PREVIOUS_TRAFFIC, ""))
    if not pinned or not before or ann.get(ledger.ROLLOUT_ID) != rollout or svc.traffic != pinned:
        return
    svc, verdict = _wait_settled(fleet, svc, clock.monotonic() + timeout_s, clock)
    if verdict.state == "ready" and svc.traffic == pinned:
        _restore_traffic(fleet, svc, before, rollout, timeout_s)
