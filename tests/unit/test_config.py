import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from baseroll import config
from baseroll.config import ConfigError

GOOD = {
    "projects": ["tenants-prod-a"],
    "regions": ["us-central1", "europe-west1"],
    "allowed_registries": ["us-docker.pkg.dev", "127.0.0.1:5000"],
    "plain_http_registries": ["127.0.0.1:5000"],
    "base_tracks": [{"name": "python", "image": "us-docker.pkg.dev/p/bases/python:3.12"}],
}


def test_good_config_parses():
    cfg = config.parse(GOOD)
    assert cfg.regions == ("us-central1", "europe-west1")
    assert cfg.track_for(cfg.base_tracks[0].image).name == "python"
    assert cfg.rollout.drift_policy == "apply-or-refuse"


@pytest.mark.parametrize(
    "patch, needle",
    [
        ({"projects": []}, "projects"),
        ({"projects": ["Bad_Project"]}, "projects"),
        ({"regions": ["moon"]}, "regions"),
        ({"base_tracks": [{"name": "x", "image": "us-docker.pkg.dev/p/b@sha256:" + "a" * 64}]}, "follows a tag"),
        ({"base_tracks": [{"name": "x", "image": "evil.io/p/b:1"}]}, "allowed_registries"),
        ({"base_tracks": [{"image": "us-docker.pkg.dev/p/b:1"}]}, "needs a name"),
        ({"plain_http_registries": ["other:1"]}, "plain_http_registries"),
        ({"rollout": {"concurrency": 0}}, "concurrency"),
        ({"rollout": {"drift_policy": "yolo"}}, "drift_policy"),
        ({"labels": {"opt_out": "Bad Key"}}, "label key"),
        ({"cloud_run_endpoint": "ftp://x"}, "cloud_run_endpoint"),
    ],
)
def test_bad_config_names_the_field(patch, needle):
    with pytest.raises(ConfigError, match=needle):
        config.parse({**GOOD, **patch})


def test_environment_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(GOOD))
    cfg = config.load({"BASEROLL_CONFIG": str(path), "BASEROLL_REGIONS": "asia-east1,us-east1"})
    assert cfg.regions == ("asia-east1", "us-east1")
    with pytest.raises(ConfigError, match="no configuration"):
        config.load({})
    with pytest.raises(ConfigError, match="cannot read"):
        config.load({"BASEROLL_CONFIG": str(tmp_path / "missing.yaml")})


@pytest.mark.parametrize("patch, needle", [
    ({"regoins": ["us-central1"]}, "regoins: unknown setting"),
    ({"labels": {"base": "x"}}, "labels.base: unknown setting"),
    ({"rollout": {"wave": [1.0]}}, "rollout.wave: unknown setting"),
    ({"rollout": {"waves": [0.5, 0.2, 1.0]}}, "strictly increasing"),
    ({"rollout": {"waves": [0.5]}}, "end at 1.0"),
    ({"rollout": {"failure_budget": "101%"}}, "failure_budget"),
    ({"rollout": {"region_quota": {"moon": 5}}}, "region_quota"),
])
def test_unknown_and_bad_rollout_settings(patch, needle):
    with pytest.raises(ConfigError, match=needle):
        config.parse({**GOOD, **patch})


def test_failure_budget_count_and_percentage():
    assert config.parse({**GOOD, "rollout": {"failure_budget": 2}}).rollout.failure_budget.exceeded(3, 100)
    assert not config.parse({**GOOD, "rollout": {"failure_budget": 2}}).rollout.failure_budget.exceeded(2, 100)
    pct = config.parse({**GOOD, "rollout": {"failure_budget": "5%"}}).rollout.failure_budget
    assert not pct.exceeded(5, 100) and pct.exceeded(6, 100)


def test_observe_mode_and_concurrency():
    cfg = config.parse({**GOOD, "rollout": {"dry_run": True, "concurrency": 3}})
    assert cfg.rollout.dry_run and cfg.rollout.concurrency == 3
    with pytest.raises(ConfigError, match="rollout.dry_run"):
        config.parse({**GOOD, "rollout": {"dry_run": "yes"}})


def test_signing_policy_is_configuration():
    cfg = config.parse({**GOOD, "signatures": {"policy": "require", "request_topic": "sign-requests"}})
    assert cfg.signatures == config.SigningPolicy("require", "sign-requests")
    assert config.parse(GOOD).signatures == config.SigningPolicy()
    for bad in ({"policy": "maybe"}, {"request_topic": "goog-sign"}, {"request_topic": "ab"}):
        with pytest.raises(ConfigError, match="signatures"):
            config.parse({**GOOD, "signatures": bad})


def test_config_pulls_in_no_http_client_or_google_sdk():
    """config is pure: loading it must not import httpx (through the registry client) or a Google SDK."""
    code = ("import sys, baseroll.config; bad = [m for m in sys.modules if m.split('.')[0] in ('httpx', 'grpc')"
            " or m.startswith(('google.cloud.run', 'google.cloud.pubsub', 'google.auth'))]; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(Path(config.__file__).parents[1])})
    assert out.stdout.strip() == "[]"
