"""The local manager's tests' fixtures: the ``agent`` of ``tests/local/support.py``, started on a
state dir of the test's own and stopped at the end."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from reconciler.core.clock import FakeClock
from reconciler.testing.fake import FakeExecutor
from tests.local.support import Agent


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture
async def agent(state_dir: Path, executor: FakeExecutor, clock: FakeClock) -> AsyncIterator[Agent]:
    a = await Agent(state_dir, executor, clock).start()
    yield a
    await a.stop()
