"""CRUD endpoints for notes."""

from fastapi import APIRouter, Depends, HTTPException, Response, status
from sqlalchemy import select
from sqlalchemy.orm import Session

from ..database import get_db
from ..models import Note
from ..schemas import NoteCreate, NoteRead

router = APIRouter(prefix="/notes", tags=["notes"])


def _get_or_404(db: Session, note_id: int) -> Note:
    note = db.get(Note, note_id)
    if note is None:
        raise HTTPException(status_code=status.HTTP_404_NOT_FOUND, detail="note not found")
    return note


@router.get("/", response_model=list[NoteRead])
def list_notes(db: Session = Depends(get_db)) -> list[Note]:
    """Every note, newest first."""
    return list(db.scalars(select(Note).order_by(Note.id.desc())))


@router.post("/", response_model=NoteRead, status_code=status.HTTP_201_CREATED)
def create_note(payload: NoteCreate, db: Session = Depends(get_db)) -> Note:
    """Store a note."""
    note = Note(**payload.model_dump())
    db.add(note)
    db.commit()
    db.refresh(note)
    return note


@router.get("/{id}", response_model=NoteRead)
def read_note(id: int, db: Session = Depends(get_db)) -> Note:
    """One note."""
    return _get_or_404(db, id)


@router.delete("/{id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_note(id: int, db: Session = Depends(get_db)) -> Response:
    """Delete one note."""
    db.delete(_get_or_404(db, id))
    db.commit()
    return Response(status_code=status.HTTP_204_NO_CONTENT)
