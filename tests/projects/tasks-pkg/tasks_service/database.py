"""Async engine, sessions and the ORM model."""

from collections.abc import AsyncIterator
from datetime import date

from sqlalchemy import Boolean, Date, String
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.pool import StaticPool

from .settings import settings

in_memory = settings.database_url.endswith("://")
engine = create_async_engine(settings.database_url, poolclass=StaticPool if in_memory else None)
Session = async_sessionmaker(engine, expire_on_commit=False)


class Base(DeclarativeBase):
    pass


class Task(Base):
    __tablename__ = "tasks"

    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(200))
    due: Mapped[date] = mapped_column(Date)
    done: Mapped[bool] = mapped_column(Boolean, default=False)


async def session() -> AsyncIterator[AsyncSession]:
    async with Session() as s:
        yield s
