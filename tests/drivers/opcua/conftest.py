"""Fixtures of the OPC UA driver tests: a module-scoped in-test server (see ``opcua_testserver``)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest_asyncio
from opcua_testserver import OvenServer, start_oven_server


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def oven() -> AsyncIterator[OvenServer]:
    """One server for the whole module (start-up costs about a second)."""
    srv = await start_oven_server()
    yield srv
    await srv.server.stop()
