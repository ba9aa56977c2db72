"""Verify at zero traffic on the Cloud Run stand-in, through the real adapter, `deploy.apply` and the
real prober: google-auth's ID tokens from the local token server, the stand-in's proxy checking their
audience on the tag's URL (docs/GOOGLE_APIS.md#verify-at-zero-traffic). A pass gives the new revision
the traffic; a refused request (a token for another audience: 401) rolls back with the traffic never
moved."""
from __future__ import annotations

from baseroll.clock import SYSTEM
from baseroll.contracts import ledger
from baseroll.fleet import deploy, traffic
from baseroll.fleet.cloudrun import CloudRunFleet
from baseroll.fleet.verification import VERIFY_TAG, Check, Probe
from baseroll.fleet.verify import GoogleIdTokens, HttpProber
from baseroll.fleet.view import ALL_TO_LATEST
from google.cloud import run_v2

from infra.local.cloudrun_standin import CloudRunStandin
from infra.local.token_server import TokenServer
from tests.integration.test_cloudrun_standin import (  # noqa: F401  (module-scoped fixtures)
    Images,
    _create,
    _no_faults_left,
    client,
    images,
    registry,
    revisions,
    standin,
)
from tests.integration.test_verify_id_token import tokens  # noqa: F401  (the worker's key, its token server)

BASE = "sha256:" + "c" * 64
RID = "python-" + "c" * 12


class _OtherAudience(GoogleIdTokens):
    """A token for another URL than the service's: Cloud Run (and the proxy) answer 401."""

    def token(self, audience: str) -> str:
        return super().token(audience + "-other")


def _apply(run: run_v2.ServicesClient, name: str, target: str, prober: HttpProber) -> deploy.Outcome:
    fleet = CloudRunFleet(run)
    return deploy.apply(fleet, fleet.get_service(name), deploy.Target({0: target}), rollout=RID, base_digest=BASE,
                        timeout_s=30, clock=SYSTEM, check=Check(Probe(), prober))


def test_a_passing_revision_is_verified_on_its_tag_then_gets_the_traffic(
    client: run_v2.ServicesClient, standin: CloudRunStandin, images: Images,  # noqa: F811
    tokens: TokenServer,  # noqa: F811
) -> None:
    name = _create(client, "verify-pass", images.good).name
    prober = HttpProber(GoogleIdTokens())
    out = _apply(client, name, images.good_v2, prober)
    prober.close()

    assert out.result == "updated", out.reason
    now = CloudRunFleet(client).get_service(name)
    new = traffic.short(now.latest_ready_revision)
    assert out.reason.startswith("3 x GET / -> 200")
    assert now.images == (images.good_v2,) and now.traffic == ALL_TO_LATEST and VERIFY_TAG not in now.tag_uris
    assert standin.proxy.served[new] == 3  # the three requests reached the new revision, by its tag
    assert tokens.counts["id_tokens"] == 1
    assert now.annotations[ledger.STATE] == ledger.ROLLED
    assert now.annotations[ledger.VERIFY] == "passed: 3 x GET / -> 200"


def test_a_refused_check_rolls_back_and_the_traffic_never_moves(
    client: run_v2.ServicesClient, standin: CloudRunStandin, images: Images,  # noqa: F811
    revisions: run_v2.RevisionsClient, tokens: TokenServer,  # noqa: F811  # noqa: F811
) -> None:
    created = _create(client, "verify-fail", images.good)
    serving = traffic.short(created.latest_ready_revision)
    prober = HttpProber(_OtherAudience())
    out = _apply(client, created.name, images.good_v2, prober)
    prober.close()

    assert out.result == "rolled-back", out.reason
    assert "verification failed: request 1/3 GET / answered 401" in out.reason
    now = CloudRunFleet(client).get_service(created.name)
    assert now.images == (images.good,) and now.traffic == ALL_TO_LATEST and VERIFY_TAG not in now.tag_uris
    assert now.annotations[ledger.STATE] == ledger.ROLLED_BACK
    assert now.annotations[ledger.VERIFY].startswith("failed: request 1/3 GET / answered 401")
    assert now.annotations[ledger.PINNED_TRAFFIC] == ""
    # LATEST now resolves to the rollback's revision (the old image), not to the first one.
    assert traffic.short(now.latest_ready_revision) not in (serving, "")
    made = [r.name.rsplit("/", 1)[1] for r in revisions.list_revisions(parent=created.name)]
    assert len(made) == 3  # the first, the one verified and refused, the rollback's
    assert sum(standin.proxy.served[r] for r in made) == 0  # refused at the door: no revision answered
