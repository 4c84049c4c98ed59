"""The async engine and session factory.

DATABASE_URL picks the database; the default is an in-memory SQLite database
(aiosqlite) shared by every connection of the process.
"""

import os
from collections.abc import AsyncIterator

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.pool import StaticPool

DATABASE_URL = os.environ.get("DATABASE_URL", "sqlite+aiosqlite://")

engine = create_async_engine(DATABASE_URL, poolclass=StaticPool) if DATABASE_URL.endswith("://") else create_async_engine(DATABASE_URL)
SessionLocal = async_sessionmaker(engine, expire_on_commit=False)


async def get_session() -> AsyncIterator[AsyncSession]:
    """One session per request."""
    async with SessionLocal() as session:
        yield session
