from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from freezegun import freeze_time

from tasks_service.main import app
from tests.factories import TaskPayload


@pytest.fixture()
def client() -> Iterator[TestClient]:
    with TestClient(app) as c:
        yield c


def test_health(client: TestClient) -> None:
    assert client.get("/health").status_code == 200


def test_create_task(client: TestClient) -> None:
    payload = TaskPayload()
    response = client.post("/tasks", json=payload)
    assert response.status_code == 201
    assert response.json()["title"] == payload["title"]
    assert response.json()["overdue"] is False


def test_list_tasks(client: TestClient) -> None:
    created = client.post("/tasks", json=TaskPayload()).json()
    assert created["id"] in [t["id"] for t in client.get("/tasks").json()]


def test_get_task(client: TestClient) -> None:
    created = client.post("/tasks", json=TaskPayload(title="pay rent")).json()
    assert client.get(f"/tasks/{created['id']}").json()["title"] == "pay rent"
    assert client.get("/tasks/99999").status_code == 404


def test_a_task_past_its_due_date_is_overdue_until_done(client: TestClient) -> None:
    with freeze_time("2031-03-01", real_asyncio=True):
        created = client.post("/tasks", json=TaskPayload(due="2031-03-05")).json()
        assert created["overdue"] is False
    with freeze_time("2031-03-09", real_asyncio=True):
        assert client.get(f"/tasks/{created['id']}").json()["overdue"] is True
        done = client.patch(f"/tasks/{created['id']}", json={"done": True}).json()
        assert done["overdue"] is False
