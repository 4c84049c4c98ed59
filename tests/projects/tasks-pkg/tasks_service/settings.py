"""Configuration from the environment (TASKS_*)."""

from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TASKS_")

    database_url: str = "sqlite+aiosqlite://"


settings = Settings()
