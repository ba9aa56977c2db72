"""The one policy gate: every reason a service is skipped or a task refused, one constant per outcome.

The texts are user-visible (plan output, `service.planned` / `task.done` logs, ledger reasons) and
tests match on them: change them here or nowhere. Two decisions are made below the rollout layer,
because `fleet.deploy` needs them where it cannot import this module: a target already rolled
back (the ledger) and a service changed since planning (the fleet). They are re-exported here, so
this module still lists every outcome. Pure: no SDK, no I/O.
"""
from __future__ import annotations

from typing import Callable, Mapping

from baseroll.config import Labels, VerifySettings
from baseroll.contracts import ledger
from baseroll.contracts.messages import Rollout
from baseroll.contracts.records import FINISHED, TERMINAL, RolloutRecord
from baseroll.fleet import deploy, traffic
from baseroll.fleet.verification import Probe
from baseroll.fleet.view import ServiceView
from baseroll.images import refs
from baseroll.images.refs import ImageRef

Scope = Callable[[str, Mapping[str, str]], bool]  # (service name, labels) -> in scope

# ---------------------------------------------------------------- the service, before its containers
OUTSIDE_SCOPE = "outside the request's filter"
OPTED_OUT = "opted out by label {label}=true"
ALREADY_ROLLED_BACK = ledger.ALREADY_ROLLED_BACK
already_rolled_back = ledger.already_rolled_back

# ---------------------------------------------------------------- one container (CONTAINER wraps each)
CONTAINER = "container {index}: {reason}"
NOT_ALLOW_LISTED = "registry {registry} is not allow-listed"
UNREADABLE = "image unreadable: {why}"
NOT_INSPECTED = "not inspected"
BASE_URI_UNPARSABLE = "base_image_uri: {error}"
BASE_URI_FOLLOWS_TAG = "base_image_uri {uri} follows a tag: Cloud Run's automatic base image updates manage it"
BASE_URI_OTHER_BASE = "base_image_uri is another base"
# Not on the base: `images.match` says how the image relates to the track ("built on …", "not built on …").
# Lineage (`rollout.lineage`): the image is on the track's repository but not on a version of this track.
OTHER_TRACK = "built on {base}, another track of this repository"
LINEAGE_UNKNOWN = "built on {base}, a version no track's tag is known to have pointed to"
ANNOTATED_WITHOUT_TAG = "annotated base {name} names no tag: not the track {track}"

# ---------------------------------------------------------------- the service, after its containers
ALREADY_ON_NEW_BASE = "already on the new base"
ALREADY_ON_NEW_BUILD = "already on the new build"
DOES_NOT_RUN = "does not run {app}"
NO_CONTAINER = "no container"

# ---------------------------------------------------------------- at release (the coordinator step)
REBASE_REFUSED = "rebase failed: {reason}"  # a refused config drift (`images.rebase`) arrives here
UNSIGNED = "rebased image {image} is unsigned and signatures.policy is require"

# ---------------------------------------------------------------- at the worker (outcome, reason)
SUPERSEDED = "{track_image} now points at {current}"
CANCELLED = "rollout {status}: {reason}"
IMAGE_CHANGED_SINCE_PLANNING = "image changed since planning"
CHANGED_SINCE_PLANNING = deploy.CHANGED_SINCE_PLANNING
changed_since_planning = deploy.changed_since_planning
CHANGED_DURING_GATE = deploy.CHANGED_DURING_GATE  # a failed target not rolled back over someone else's change
TRAFFIC_PINNED = traffic.TRAFFIC_PINNED  # rollout.pinned_traffic: skip (fleet/traffic.py)
NO_TRAFFIC_WOULD_FOLLOW = traffic.NO_TRAFFIC_WOULD_FOLLOW


# ---------------------------------------------------------------- verify at zero traffic
VERIFY_OFF_VALUES = frozenset({"false", "off", "no"})  # values of labels.verify that turn it off
NOT_VERIFIED_LABEL = "not verified: opted out by label {label}"
NOT_VERIFIED_INGRESS = "not verified: ingress {ingress} (set rollout.verify.internal_ingress if the worker egresses through the VPC)"
NOT_VERIFIED_NO_INGRESS = "not verified: ingress INGRESS_TRAFFIC_NONE, nothing can reach it"
OPEN_INGRESS = frozenset({"", "INGRESS_TRAFFIC_UNSPECIFIED", "INGRESS_TRAFFIC_ALL"})


def not_verified(svc: ServiceView, settings: VerifySettings, labels: Labels) -> str | None:
    """Why a service that verification is on for is rolled on readiness alone, or None. Its ingress
    decides whether the worker can reach it (docs/GOOGLE_APIS.md#verify-at-zero-traffic): a blocked
    request may be answered 404, which would pass a check that never reached the revision."""
    if svc.labels.get(labels.verify, "").lower() in VERIFY_OFF_VALUES:
        return NOT_VERIFIED_LABEL.format(label=labels.verify)
    if svc.ingress == "INGRESS_TRAFFIC_NONE":
        return NOT_VERIFIED_NO_INGRESS
    if svc.ingress not in OPEN_INGRESS and not settings.internal_ingress:
        return NOT_VERIFIED_INGRESS.format(ingress=svc.ingress)
    return None


def verification_probe(svc: ServiceView, settings: VerifySettings, labels: Labels) -> Probe | None:
    """The requests `svc`'s new revision must answer at zero traffic, or None when it is not
    verified (off in the config, `not_verified`; a job or worker pool has no URL).
    `labels.verify_path` replaces the path: a label value has no '/', so each "--" in it stands for
    one ("api--health" is /api/health)."""
    if not settings.enabled or svc.kind != "service" or not_verified(svc, settings, labels):
        return None
    path = settings.path
    label_path = svc.labels.get(labels.verify_path, "")
    if label_path:
        path = "/" + label_path.replace("--", "/").lstrip("/")
    return Probe(path=path, method=settings.method, expect_below=settings.expect_below,
                 expect_status=settings.expect_status, requests=settings.requests, timeout_s=settings.timeout_s)


def everything(name: str, labels: Mapping[str, str]) -> bool:
    return True


def opted_out(svc: ServiceView, labels: Labels) -> bool:
    return svc.labels.get(labels.opt_out, "").lower() == "true"


def service_skip(svc: ServiceView, labels: Labels, scope: Scope, new_digest: str | None) -> str | None:
    """Why to skip the service before looking at its containers, or None."""
    if not scope(svc.name, svc.labels):
        return OUTSIDE_SCOPE
    if opted_out(svc, labels):
        return OPTED_OUT.format(label=labels.opt_out)
    return already_rolled_back(svc.annotations, new_digest)


def registry_refused(ref: ImageRef, allowed: frozenset[str]) -> str | None:
    """Why an image's registry may not be read or written (not on the allow-list), or None."""
    return None if refs.is_allowed(ref, allowed) else NOT_ALLOW_LISTED.format(registry=ref.registry)


def container(index: int, reason: str) -> str:
    return CONTAINER.format(index=index, reason=reason)


def rebase_refused(reason: str) -> str:
    return REBASE_REFUSED.format(reason=reason)


def signature_verdict(image: ImageRef | str, signed: bool, policy: str) -> str | None:
    """Why a rebased image may not be deployed under `signatures.policy`, or None. Only `require`
    refuses; `report` (and whether the original was signed) is for the logs to tell."""
    return UNSIGNED.format(image=image) if policy == "require" and not signed else None


def superseded(ro: Rollout, current_digest: str | None) -> tuple[str, str] | None:
    """(outcome, reason) when the followed tag moved past the task's base digest, else None."""
    if current_digest != ro.base_digest:
        return "superseded", SUPERSEDED.format(track_image=ro.track_image, current=current_digest)
    return None


def cancelled(record: RolloutRecord | None) -> tuple[str, str] | None:
    """(outcome, reason) when the task's rollout ended (aborted, halted…) before the task ran, else None."""
    if record is not None and record.status in TERMINAL and record.status != FINISHED:
        return "cancelled", CANCELLED.format(status=record.status, reason=record.reason)
    return None


def image_changed_since_planning(svc: ServiceView, targets: Mapping[int, str],
                                 expected: tuple[str, ...]) -> str | None:
    """Why not to apply a task: a targeted container is gone, or runs neither the image planned
    from (`expected`) nor the target; else None."""
    for i, target in targets.items():
        if i >= len(svc.images) or (svc.images[i] != target and svc.images[i] != expected[i]):
            return IMAGE_CHANGED_SINCE_PLANNING
    return None
