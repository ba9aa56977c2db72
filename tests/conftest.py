from pathlib import Path

import pytest
from baseroll import log
from xdist.scheduler import LoadScopeScheduling

TESTS = Path(__file__).parent
# Under pytest-xdist (`make test`: -n N --dist loadscope) work units start in this order, so the
# long end-to-end ones start first and no worker is left with a long tail.
TIER_ORDER = ("e2e", "integration", "unit")
# The longest e2e modules (minutes each), started before the rest of their tier.
LONGEST = ("tests/e2e/test_reliability.py", "tests/e2e/test_fleet_rollout.py")
# Modules whose tests each start a stack of their own: each test is a work unit of its own.
STANDALONE = ("tests/e2e/test_reliability.py",)
FUZZ_EXAMPLES = 1_000  # a Hypothesis test of this many inputs or more is a fuzzer (marked `fuzz`)


@pytest.fixture(autouse=True)
def _logs_to_stdout():
    """The CLI sends its log to stderr for the rest of the process; every test starts from stdout."""
    log.to_stderr(False)
    yield
    log.to_stderr(False)


def _tier(item: pytest.Item) -> str:
    parts = item.path.relative_to(TESTS).parts
    return parts[0] if len(parts) > 1 else ""


def _start_order(item: pytest.Item) -> tuple[int, bool]:
    tier = _tier(item)
    rank = TIER_ORDER.index(tier) if tier in TIER_ORDER else len(TIER_ORDER)
    return rank, item.nodeid.split("::", 1)[0] not in LONGEST


def _examples(item: pytest.Item) -> int:
    """How many inputs a Hypothesis test runs (0 for any other test)."""
    chosen = getattr(getattr(item, "obj", None), "_hypothesis_internal_use_settings", None)
    return chosen.max_examples if chosen is not None else 0


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark the fuzzers (`make unit` leaves them to `make test` and `make fuzz`); in an xdist
    worker, sort them longest first: e2e (LONGEST first), integration, unit (every worker sorts
    the same way; a stable sort keeps file order within each)."""
    for item in items:
        if _examples(item) >= FUZZ_EXAMPLES:
            item.add_marker(pytest.mark.fuzz)
    if hasattr(config, "workerinput"):
        items.sort(key=_start_order)


class TierScheduling(LoadScopeScheduling):
    """--dist loadscope with this suite's units of work: an integration or e2e module stays on one
    worker, in file order (its tests share module-scoped servers, a whole local stack, a seeded
    fleet, and build on each other's state), except the STANDALONE modules' tests; unit tests
    spread one by one. Units go out in collection order (e2e first, see TIER_ORDER)."""

    def _split_scope(self, nodeid: str) -> str:
        module = nodeid.split("::", 1)[0]
        if module.startswith("tests/unit/") or module in STANDALONE:
            return nodeid
        return module


@pytest.hookimpl(tryfirst=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    if config.getvalue("dist") != "loadscope":
        return None
    config.option.loadscopereorder = False  # the collection order above is the schedule
    return TierScheduling(config, log)
