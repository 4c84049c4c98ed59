"""Fixtures: a client on a fresh database."""

from collections.abc import AsyncIterator

import pytest
from httpx import ASGITransport, AsyncClient

from notes_api.db import engine
from notes_api.main import app
from notes_api.models import Base


@pytest.fixture()
async def client() -> AsyncIterator[AsyncClient]:
    async with engine.begin() as connection:
        await connection.run_sync(Base.metadata.drop_all)
        await connection.run_sync(Base.metadata.create_all)
    async with AsyncClient(transport=ASGITransport(app=app), base_url="http://test") as c:
        yield c
