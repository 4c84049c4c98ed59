"""Notes API: create, list, fetch and delete notes."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI, HTTPException, Response, status
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from notes_api.db import engine, get_session
from notes_api.models import Base, Note
from notes_api.schemas import NoteIn, NoteOut


async def create_tables() -> None:
    """Creates the tables (migrations/ does the same for deployments)."""
    async with engine.begin() as connection:
        await connection.run_sync(Base.metadata.create_all)


@asynccontextmanager
async def lifespan(_: FastAPI) -> AsyncIterator[None]:
    await create_tables()
    yield


app = FastAPI(title="notes-api", lifespan=lifespan)


async def find(session: AsyncSession, note_id: int) -> Note:
    note = await session.get(Note, note_id)
    if note is None:
        raise HTTPException(status_code=404, detail=f"note {note_id} not found")
    return note


@app.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@app.get("/notes", response_model=list[NoteOut])
async def list_notes(session: AsyncSession = Depends(get_session)) -> list[Note]:
    result = await session.scalars(select(Note).order_by(Note.created_at.desc(), Note.id.desc()))
    return list(result)


@app.post("/notes", response_model=NoteOut, status_code=status.HTTP_201_CREATED)
async def create_note(payload: NoteIn, session: AsyncSession = Depends(get_session)) -> Note:
    note = Note(title=payload.title, body=payload.body)
    session.add(note)
    await session.commit()
    await session.refresh(note)
    return note


@app.get("/notes/{note_id}", response_model=NoteOut)
async def get_note(note_id: int, session: AsyncSession = Depends(get_session)) -> Note:
    return await find(session, note_id)


@app.delete("/notes/{note_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_note(note_id: int, session: AsyncSession = Depends(get_session)) -> Response:
    await session.delete(await find(session, note_id))
    await session.commit()
    return Response(status_code=status.HTTP_204_NO_CONTENT)
