from fastapi.testclient import TestClient

BASE_URL = "/notes"


def test_health(client: TestClient) -> None:
    assert client.get("/health").json() == {"status": "ok"}


def test_create_and_list(client: TestClient) -> None:
    created = client.post(f"{BASE_URL}/", json={"title": "a"})
    assert created.status_code == 201
    assert [n["title"] for n in client.get(BASE_URL + "/").json()] == ["a"]


def test_read_missing_is_404(client: TestClient) -> None:
    assert client.get("/notes/12345").status_code == 404


def test_delete(client: TestClient) -> None:
    note_id = client.post("/notes/", json={"title": "b"}).json()["id"]
    assert client.delete(f"/notes/{note_id}").status_code == 204
    assert client.get(f"/notes/{note_id}").status_code == 404
