from pathlib import Path

import pytest
from baseroll import log

TESTS = Path(__file__).parent
# Under pytest-xdist (`make test`: --dist loadgroup --no-loadscope-reorder) groups start in this
# order, so the long ones start first and no worker is left with a long tail.
TIER_ORDER = ("e2e", "integration", "unit")
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


def _examples(item: pytest.Item) -> int:
    """How many inputs a Hypothesis test runs (0 for any other test)."""
    chosen = getattr(getattr(item, "obj", None), "_hypothesis_internal_use_settings", None)
    return chosen.max_examples if chosen is not None else 0


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark the fuzzers (`make unit` leaves them to `make test` and `make fuzz`). Keep each
    integration and e2e module on one xdist worker, in file order: its tests share module-scoped
    servers (a whole local stack, a seeded fleet) and build on each other's state. A test that
    names its own `xdist_group` (one that starts its own stack) runs apart; unit tests spread over
    the workers one by one."""
    for item in items:
        if _examples(item) >= FUZZ_EXAMPLES:
            item.add_marker(pytest.mark.fuzz)
        if _tier(item) in ("integration", "e2e") and not item.get_closest_marker("xdist_group"):
            item.add_marker(pytest.mark.xdist_group(item.path.relative_to(TESTS).as_posix()))
    if hasattr(config, "workerinput"):  # an xdist worker: every worker sorts the same way
        rank = {tier: i for i, tier in enumerate(TIER_ORDER)}
        items.sort(key=lambda item: rank.get(_tier(item), len(rank)))
