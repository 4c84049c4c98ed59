"""HTTP routers."""

from .notes import router as notes_router

__all__ = ["notes_router"]
