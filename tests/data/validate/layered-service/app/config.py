"""Settings from the environment."""

from functools import lru_cache

from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Service configuration; every value has a safe default."""

    model_config = SettingsConfigDict(env_prefix="NOTES_")

    database_url: str = "sqlite://"
    access_token_expire_minutes: int = 30
    api_prefix: str = ""


@lru_cache
def get_settings() -> Settings:
    """The settings, read once."""
    return Settings()
