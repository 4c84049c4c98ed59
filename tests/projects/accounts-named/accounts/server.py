"""Sign-up, sign-in and the signed-in account."""

from fastapi import Depends, FastAPI, HTTPException, status
from fastapi.security import OAuth2PasswordBearer, OAuth2PasswordRequestForm
from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from accounts.security import hash_password, issue_token, subject_of, verify_password
from accounts.store import Account, db

api = FastAPI(title="accounts")
bearer = OAuth2PasswordBearer(tokenUrl="/token")


class SignUp(BaseModel):
    email: str = Field(min_length=3, max_length=320, pattern=r"^[^@\s]+@[^@\s]+$")
    password: str = Field(min_length=8, max_length=128)


class AccountOut(BaseModel):
    id: int
    email: str


class Token(BaseModel):
    access_token: str
    token_type: str = "bearer"


def current_account(token: str = Depends(bearer), session: Session = Depends(db)) -> Account:
    email = subject_of(token)
    account = session.scalar(select(Account).where(Account.email == email)) if email else None
    if account is None:
        raise HTTPException(status_code=401, detail="invalid token", headers={"WWW-Authenticate": "Bearer"})
    return account


@api.get("/health")
def health() -> dict[str, str]:
    return {"status": "ok"}


@api.post("/accounts", response_model=AccountOut, status_code=status.HTTP_201_CREATED)
def sign_up(payload: SignUp, session: Session = Depends(db)) -> AccountOut:
    if session.scalar(select(Account).where(Account.email == payload.email)) is not None:
        raise HTTPException(status_code=409, detail="email already registered")
    account = Account(email=payload.email, password_hash=hash_password(payload.password))
    session.add(account)
    session.commit()
    return AccountOut(id=account.id, email=account.email)


@api.post("/token", response_model=Token)
def sign_in(form: OAuth2PasswordRequestForm = Depends(), session: Session = Depends(db)) -> Token:
    account = session.scalar(select(Account).where(Account.email == form.username))
    if account is None or not verify_password(form.password, account.password_hash):
        raise HTTPException(status_code=401, detail="wrong email or password")
    return Token(access_token=issue_token(account.email))


@api.get("/accounts/me", response_model=AccountOut)
def me(account: Account = Depends(current_account)) -> AccountOut:
    return AccountOut(id=account.id, email=account.email)
