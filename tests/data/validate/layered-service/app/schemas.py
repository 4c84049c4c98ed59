"""Request and response bodies."""

from pydantic import BaseModel, ConfigDict, Field


class NoteCreate(BaseModel):
    """A note as submitted."""

    title: str = Field(min_length=1, max_length=200)
    body: str = ""


class NoteRead(NoteCreate):
    """A note as stored."""

    model_config = ConfigDict(from_attributes=True)

    id: int
