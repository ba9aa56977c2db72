import pytest
from baseroll import log


@pytest.fixture(autouse=True)
def _logs_to_stdout():
    """The CLI sends its log to stderr for the rest of the process; every test starts from stdout."""
    log.to_stderr(False)
    yield
    log.to_stderr(False)
