"""Settings: the one place that reads the environment (and an optional `.env` file)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_MODEL = "claude-sonnet-4-5"


class SettingsError(Exception):
    """Configuration is missing or malformed; the message is one line naming the variable."""


class Settings(BaseSettings):
    """Everything the bot reads from its environment."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", case_sensitive=False)

    slack_client_id: str | None = Field(
        None, description="OAuth client id; with SLACK_CLIENT_SECRET, many workspaces install."
    )
    slack_client_secret: SecretStr | None = Field(None, description="OAuth client secret.")
    slack_bot_token: SecretStr | None = Field(
        None,
        validate_default=True,
        description="Bot token (xoxb-…); required unless OAuth (client id/secret) is set.",
    )
    slack_scopes: str = Field(
        "app_mentions:read,channels:history,groups:history,im:history,mpim:history,"
        "channels:read,groups:read,im:read,mpim:read,chat:write,assistant:write,commands,users:read,"
        "files:read",
        description="Bot scopes requested by the OAuth install (comma-separated).",
    )
    encryption_key: SecretStr | None = Field(
        None,
        description="Fernet key(s), comma-separated, newest first: stored bot and refresh tokens "
        "are encrypted with the first and readable with any.",
    )
    require_encryption: bool = Field(
        False,
        description="OAuth mode: refuse to start without ENCRYPTION_KEY (otherwise start-up "
        "warns that tokens are stored in plain text).",
    )
    slack_signing_secret: SecretStr | None = Field(
        None, description="Signing secret; required in HTTP mode."
    )
    slack_app_token: SecretStr | None = Field(
        None, description="App-level token (xapp-…); when set, the bot runs in Socket Mode."
    )
    slack_api_url: str = Field("https://slack.com/api/", description="Slack Web API base URL.")
    anthropic_api_key: SecretStr = Field(description="Key for the Messages endpoint.")
    anthropic_base_url: str = Field(
        "https://api.anthropic.com",
        description="Messages endpoint base URL (Anthropic or a relay that mirrors its API).",
    )
    anthropic_model: str = Field(
        DEFAULT_MODEL, description="Model id (workspaces use it unless their admins pick another)."
    )
    workspace_models: str = Field(
        "",
        description="Models workspace admins may pick in App Home, comma-separated "
        "(empty: only ANTHROPIC_MODEL, so the picker is hidden).",
    )
    anthropic_timeout: float = Field(
        120.0, gt=0, description="Seconds to wait for one Messages API response."
    )
    anthropic_max_retries: int = Field(
        3, ge=0, le=10, description="Retries on 429, 529, 5xx and connection errors."
    )
    max_output_tokens: int = Field(2048, ge=64, description="max_tokens for each answer.")
    stream_answers: bool = Field(
        True,
        description="Stream mention answers into the thread as the model writes them (Slack's "
        "streaming API, else an edited placeholder, else one post).",
    )
    context_budget_tokens: int = Field(
        150_000, ge=2_000, description="Largest prompt (estimated tokens) sent for one thread."
    )
    cache_ttl: str = Field(
        "auto",
        description="Prompt cache TTL: auto (chosen per thread from its rhythm), 5m, 1h, or off.",
    )
    cache_min_tokens: str = Field(
        "",
        description="Overrides of the minimum cacheable prompt per model prefix, e.g. "
        "`claude-sonnet-4-6=2048,my-relay-model=1024`.",
    )
    message_retention_days: int = Field(
        30, ge=1, description="Stored message text of threads idle this long is deleted."
    )
    usage_retention_days: int = Field(
        730,
        ge=0,
        description="Usage ledger rows older than this are deleted by housekeeping (0: kept for "
        "ever). At least 31: monthly budgets read the month so far.",
    )
    keep_transcripts: bool = Field(
        True,
        description="Keep the messages of conversations the bot is in as their events arrive, "
        "so answers read Slack only for what may be missing (workspace admins can turn it off "
        "in App Home; then every answer reads its thread from Slack).",
    )
    backfill_on_join: bool = Field(
        True,
        description="When the bot is added to a channel, read its recent messages within the "
        "read budget, so the first question there does not start from nothing (App Home can "
        "turn it off per workspace).",
    )
    backfill_messages: int = Field(
        100, ge=0, le=1000, description="How many recent messages a backfill on join reads."
    )
    slack_read_tier: Literal["auto", "tier3", "limited"] = Field(
        "auto",
        description="Slack's limit on conversations.replies/history for this app: `tier3` "
        "(internal and Marketplace apps), `limited` (1 request a minute, 15 messages: other "
        "distributed apps), or `auto` (Tier 3 until Slack's answers show the limit).",
    )
    full_reread_hours: float = Field(
        24.0, gt=0, description="Re-read a whole thread after this long (catches missed edits)."
    )
    digest_channel: str | None = Field(
        None, description="Channel id where `python -m bot digest --post` and the schedule post."
    )
    digest_schedule: str | None = Field(
        None,
        description="In-process weekly digest, e.g. `mon 09:00 Europe/Berlin` (day, time, zone).",
    )
    budget_daily_usd: float | None = Field(
        None, gt=0, description="Workspace spend limit per UTC day; requests over it are refused."
    )
    budget_monthly_usd: float | None = Field(
        None, gt=0, description="Workspace spend limit per calendar month (UTC)."
    )
    budget_user_daily_usd: float | None = Field(
        None, gt=0, description="Spend limit per user per UTC day."
    )
    database_url: str = Field(
        "sqlite:///bot.db",
        description="SQLAlchemy URL: `sqlite:///path/bot.db` or `postgresql://user:pw@host/db`; "
        "`postgres://` (as Heroku sets it) is read as `postgresql://`.",
    )
    port: int = Field(3000, ge=0, le=65535, description="HTTP port (0: any free port).")
    worker_threads: int = Field(
        16, ge=1, le=256, description="Threads for slow work (model calls) after the ack."
    )
    http_threads: int = Field(8, ge=1, le=256, description="HTTP server threads.")
    metrics_port: int | None = Field(
        None,
        ge=0,
        le=65535,
        description="Serve GET /metrics (and /healthz) on this port of METRICS_BIND instead of "
        "on PORT, which then answers /metrics with 404; also how a `worker` process shows its "
        "metrics (unset: a worker serves none). Must differ from PORT (0: any free port).",
    )
    metrics_bind: str = Field(
        "127.0.0.1", description="Address the METRICS_PORT listener binds to (0.0.0.0: all)."
    )
    shutdown_timeout_seconds: float = Field(
        25.0, ge=0, description="On SIGTERM, how long to let jobs in hand finish before re-queuing."
    )
    job_lease_seconds: float = Field(
        120.0, ge=1, description="A job whose worker stopped heartbeating this long is retried."
    )
    log_level: str = Field("INFO", description="Logging level.")

    @field_validator("cache_ttl")
    @classmethod
    def _ttl(cls, value: str) -> str:
        if value not in ("auto", "5m", "1h", "off"):
            raise ValueError("must be auto, 5m, 1h or off")
        return value

    @field_validator("usage_retention_days")
    @classmethod
    def _usage_retention(cls, value: int) -> int:
        if 0 < value < 31:
            raise ValueError("must be 0 (keep for ever) or at least 31: monthly budgets need it")
        return value

    @field_validator("digest_schedule")
    @classmethod
    def _schedule(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        from bot.schedule import parse_schedule

        parse_schedule(value)  # raises ValueError with what is expected
        return value

    @field_validator("cache_min_tokens")
    @classmethod
    def _floors(cls, value: str) -> str:
        for item in filter(None, (p.strip() for p in value.split(","))):
            prefix, _, number = item.partition("=")
            if not prefix.strip() or not number.strip().isdigit():
                raise ValueError("must look like model-prefix=1024,other-prefix=2048")
        return value

    @property
    def model_choices(self) -> list[str]:
        """ANTHROPIC_MODEL first, then WORKSPACE_MODELS, without repeats."""
        out = [self.anthropic_model]
        for item in (p.strip() for p in self.workspace_models.split(",")):
            if item and item not in out:
                out.append(item)
        return out

    @property
    def cache_floors(self) -> dict[str, int]:
        """CACHE_MIN_TOKENS as a dict of model prefix -> minimum tokens."""
        out = {}
        for item in filter(None, (p.strip() for p in self.cache_min_tokens.split(","))):
            prefix, _, number = item.partition("=")
            out[prefix.strip()] = int(number)
        return out

    @field_validator("slack_bot_token")
    @classmethod
    def _bot_token(cls, value: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        if value is not None and not value.get_secret_value():
            value = None
        if value is None:
            if info.data.get("slack_client_id") and info.data.get("slack_client_secret"):
                return None
            raise ValueError("is required (or SLACK_CLIENT_ID and SLACK_CLIENT_SECRET for OAuth)")
        if value is not None and not value.get_secret_value().startswith("xox"):
            raise ValueError("must be a bot token starting with xoxb-")
        return value

    @field_validator("encryption_key")
    @classmethod
    def _fernet(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value().strip():
            return None
        from cryptography.fernet import Fernet

        for key in value.get_secret_value().split(","):
            try:
                Fernet(key.strip())
            except (ValueError, TypeError):
                raise ValueError(
                    "must be Fernet keys (32 url-safe base64 bytes each), comma-separated"
                ) from None
        return value

    @property
    def oauth(self) -> bool:
        """True when the app installs into workspaces through Slack's OAuth flow."""
        return bool(self.slack_client_id and self.slack_client_secret)

    @field_validator("slack_app_token")
    @classmethod
    def _app_token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value():
            return None
        if value is not None and not value.get_secret_value().startswith("xapp-"):
            raise ValueError("must be an app-level token starting with xapp-")
        return value

    @field_validator("slack_api_url", "anthropic_base_url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must be an http(s) URL")
        return value

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: str) -> str:
        scheme, sep, rest = value.partition("://")
        dialect, plus, driver = scheme.partition("+")
        if sep and dialect == "postgres":  # SQLAlchemy 2 knows only the name postgresql
            return f"postgresql{plus}{driver}://{rest}"
        return value

    @field_validator("metrics_port")
    @classmethod
    def _metrics_port(cls, value: int | None, info: ValidationInfo) -> int | None:
        port = info.data.get("port")
        socket_mode = info.data.get("slack_app_token") is not None  # PORT is not listened on
        if value and value == port and not socket_mode:
            raise ValueError(
                f"must differ from PORT ({port}), on which Slack's requests are served"
            )
        return value

    @field_validator("log_level")
    @classmethod
    def _level(cls, value: str) -> str:
        value = value.upper()
        if value not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ValueError("must be DEBUG, INFO, WARNING or ERROR")
        return value

    @property
    def socket_mode(self) -> bool:
        """True when an app-level token is configured."""
        return self.slack_app_token is not None

    def require_http(self) -> None:
        """Raise SettingsError unless HTTP mode can verify requests."""
        if not self.socket_mode and not _secret(self.slack_signing_secret):
            raise SettingsError(
                "SLACK_SIGNING_SECRET is required in HTTP mode "
                "(or set SLACK_APP_TOKEN to use Socket Mode)"
            )


def _secret(value: SecretStr | None) -> str:
    return value.get_secret_value() if value is not None else ""


def load_settings(env: dict[str, str] | None = None, *, env_file: str | None = ".env") -> Settings:
    """Read settings from `env` (or the process environment); one-line SettingsError on failure."""
    try:
        if env is not None:
            return Settings(_env_file=env_file, **{k.lower(): v for k, v in env.items()})
        return Settings(_env_file=env_file)
    except ValidationError as exc:
        raise SettingsError(_describe(exc)) from None


def _describe(exc: ValidationError) -> str:
    problems = []
    for err in exc.errors():
        if not err["loc"]:  # a check across settings: its message names the variables
            problems.append(err["msg"].removeprefix("Value error, "))
            continue
        name = str(err["loc"][0]).upper()
        if err["type"] == "missing":
            problems.append(f"{name} is required")
        else:
            msg = err["msg"].removeprefix("Value error, ")
            if msg.startswith("is required"):
                problems.append(f"{name} {msg}")
                continue
            problems.append(f"{name} {msg}" if not msg.startswith(name) else msg)
    return "; ".join(problems)
