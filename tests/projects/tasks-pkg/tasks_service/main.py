"""The tasks service."""

from contextlib import asynccontextmanager

from fastapi import FastAPI

from .database import Base, engine
from .routers import tasks


@asynccontextmanager
async def lifespan(_: FastAPI):
    async with engine.begin() as connection:
        await connection.run_sync(Base.metadata.create_all)
    yield
    await engine.dispose()


app = FastAPI(title="tasks-service", lifespan=lifespan)
app.include_router(tasks.router)


@app.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}
