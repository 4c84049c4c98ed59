from fastapi.testclient import TestClient

from accounts.server import api

client = TestClient(api)


def sign_up(email: str) -> None:
    assert client.post("/accounts", json={"email": email, "password": "correct horse"}).status_code == 201


def test_health() -> None:
    assert client.get("/health").json() == {"status": "ok"}


def test_sign_up_refuses_a_second_account_with_the_same_email() -> None:
    sign_up("ann@example.com")
    assert client.post("/accounts", json={"email": "ann@example.com", "password": "another one"}).status_code == 409


def test_sign_in_and_read_my_account() -> None:
    sign_up("bob@example.com")
    token = client.post("/token", data={"username": "bob@example.com", "password": "correct horse"}).json()["access_token"]
    me = client.get("/accounts/me", headers={"Authorization": f"Bearer {token}"})
    assert me.json()["email"] == "bob@example.com"


def test_a_wrong_password_gets_no_token() -> None:
    sign_up("cy@example.com")
    assert client.post("/token", data={"username": "cy@example.com", "password": "wrong"}).status_code == 401


def test_my_account_needs_a_token() -> None:
    assert client.get("/accounts/me").status_code == 401
