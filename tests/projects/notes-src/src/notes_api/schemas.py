"""Request and response bodies."""

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field


class NoteIn(BaseModel):
    """A note as clients send it."""

    title: str = Field(min_length=1, max_length=200)
    body: str = Field(default="", max_length=10_000)


class NoteOut(NoteIn):
    """A stored note."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    created_at: datetime
