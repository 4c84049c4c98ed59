"""Every endpoint of the notes API."""

from httpx import AsyncClient
from polyfactory.factories.pydantic_factory import ModelFactory

from notes_api.schemas import NoteIn


class NoteInFactory(ModelFactory[NoteIn]):
    __model__ = NoteIn


async def test_health(client: AsyncClient) -> None:
    assert (await client.get("/health")).json() == {"status": "ok"}


async def test_create_note(client: AsyncClient) -> None:
    payload = NoteInFactory.build()
    response = await client.post("/notes", json=payload.model_dump())
    assert response.status_code == 201
    assert response.json()["title"] == payload.title


async def test_an_empty_title_is_refused(client: AsyncClient) -> None:
    assert (await client.post("/notes", json={"title": ""})).status_code == 422


async def test_list_notes_newest_first(client: AsyncClient) -> None:
    for title in ("first", "second"):
        await client.post("/notes", json={"title": title})
    titles = [n["title"] for n in (await client.get("/notes")).json()]
    assert titles == ["second", "first"]


async def test_get_note(client: AsyncClient) -> None:
    created = (await client.post("/notes", json={"title": "t", "body": "b"})).json()
    assert (await client.get(f"/notes/{created['id']}")).json()["body"] == "b"
    assert (await client.get("/notes/999")).status_code == 404


async def test_delete_note(client: AsyncClient) -> None:
    created = (await client.post("/notes", json={"title": "t"})).json()
    assert (await client.delete(f"/notes/{created['id']}")).status_code == 204
    assert (await client.delete(f"/notes/{created['id']}")).status_code == 404
