"""Workspaces: OAuth installations (tokens encrypted at rest) and the Web API client for each.

One bot token (SLACK_BOT_TOKEN) serves one workspace. With SLACK_CLIENT_ID/SECRET, every
workspace installs through Slack's OAuth flow and its tokens live in `slack_installations` /
`slack_bots` (Bolt's tables, owned by our migrations), encrypted with ENCRYPTION_KEY.
"""

from __future__ import annotations

import copy
import logging
import threading
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from slack_sdk import WebClient
from slack_sdk.oauth.installation_store.models.bot import Bot
from slack_sdk.oauth.installation_store.models.installation import Installation
from slack_sdk.oauth.installation_store.sqlalchemy import SQLAlchemyInstallationStore
from slack_sdk.oauth.state_store.sqlalchemy import SQLAlchemyOAuthStateStore
from slack_sdk.oauth.token_rotation import TokenRotator
from sqlalchemy import Engine, select, update

from bot.store.models import Base, slack_bots, slack_installations, slack_oauth_states

log = logging.getLogger(__name__)

PREFIX = "enc1:"
_TOKEN_FIELDS = ("bot_token", "bot_refresh_token", "user_token", "user_refresh_token")


class TokenCipher:
    """Fernet encryption of stored tokens; several keys (newest first) allow rotation."""

    def __init__(self, keys: str | None) -> None:
        parts = [k.strip() for k in (keys or "").split(",") if k.strip()]
        self._fernet = MultiFernet([Fernet(k) for k in parts]) if parts else None

    @property
    def enabled(self) -> bool:
        """True when ENCRYPTION_KEY is set."""
        return self._fernet is not None

    def encrypt(self, value: str | None) -> str | None:
        """The stored form of a token (unchanged when no key is set or already encrypted)."""
        if value is None or self._fernet is None or value.startswith(PREFIX):
            return value
        return PREFIX + self._fernet.encrypt(value.encode()).decode()

    def decrypt(self, value: str | None) -> str | None:
        """A usable token from its stored form; raises ValueError without the right key."""
        if value is None or not value.startswith(PREFIX):
            return value
        if self._fernet is None:
            raise ValueError("a stored token is encrypted but ENCRYPTION_KEY is not set")
        try:
            return self._fernet.decrypt(value[len(PREFIX) :].encode()).decode()
        except InvalidToken:
            raise ValueError("a stored token cannot be decrypted with ENCRYPTION_KEY") from None

    def rotate(self, value: str | None) -> str | None:
        """Re-encrypt with the newest key (plain values get encrypted)."""
        if value is None or self._fernet is None:
            return value
        if value.startswith(PREFIX):
            return PREFIX + self._fernet.rotate(value[len(PREFIX) :].encode()).decode()
        return self.encrypt(value)


class EncryptedInstallationStore(SQLAlchemyInstallationStore):
    """Bolt's SQLAlchemy store on our tables, with tokens encrypted at rest."""

    def __init__(self, client_id: str, engine: Engine, cipher: TokenCipher) -> None:
        self.metadata = Base.metadata
        self.installations = slack_installations
        self.bots = slack_bots
        self.client_id = client_id
        self.engine = engine
        self._logger = logging.getLogger(__name__)
        self._cipher = cipher

    def _sealed(self, item: Any) -> Any:
        item = copy.copy(item)
        for name in _TOKEN_FIELDS:
            if hasattr(item, name):
                setattr(item, name, self._cipher.encrypt(getattr(item, name)))
        return item

    def save(self, installation: Installation) -> None:
        """Store an installation (and its bot) with tokens encrypted."""
        super().save(self._sealed(installation))

    def save_bot(self, bot: Bot) -> None:
        """Store a bot (e.g. after token rotation) with tokens encrypted."""
        super().save_bot(self._sealed(bot))

    def build_installation_entity(self, row: Any) -> Installation:  # type: ignore[override]
        """An installation with usable tokens."""
        item = SQLAlchemyInstallationStore.build_installation_entity(row)
        for name in _TOKEN_FIELDS:
            setattr(item, name, self._cipher.decrypt(getattr(item, name)))
        return item

    def build_bot_entity(self, row: Any) -> Bot:  # type: ignore[override]
        """A bot with usable tokens."""
        item = SQLAlchemyInstallationStore.build_bot_entity(row)
        for name in ("bot_token", "bot_refresh_token"):
            setattr(item, name, self._cipher.decrypt(getattr(item, name)))
        return item

    def delete_all(self, *, enterprise_id: str | None, team_id: str | None) -> None:
        """Forget a workspace's installations and bots (uninstall)."""
        self.delete_installation(enterprise_id=enterprise_id, team_id=team_id)
        self.delete_bot(enterprise_id=enterprise_id, team_id=team_id)

    def rotate_keys(self) -> int:
        """Re-encrypt every stored token with the newest key; returns rows changed."""
        changed = 0
        with self.engine.begin() as conn:
            for table, fields in (
                (slack_installations, _TOKEN_FIELDS),
                (slack_bots, ("bot_token", "bot_refresh_token")),
            ):
                cols = [table.c.id, *(table.c[f] for f in fields)]
                for row in conn.execute(select(*cols)).mappings().all():
                    values = {f: self._cipher.rotate(row[f]) for f in fields}
                    conn.execute(update(table).where(table.c.id == row["id"]).values(**values))
                    changed += 1
        return changed


class OAuthStates(SQLAlchemyOAuthStateStore):
    """Bolt's OAuth state store on our `slack_oauth_states` table (10-minute states)."""

    def __init__(self, engine: Engine, expiration_seconds: int = 600) -> None:
        self.expiration_seconds = expiration_seconds
        self._logger = logging.getLogger(__name__)
        self.engine = engine
        self.metadata = Base.metadata
        self.oauth_states = slack_oauth_states


class SlackClients:
    """The Web API client to use for a workspace.

    Single-workspace mode returns the one client; OAuth mode builds a client from the
    workspace's installation (refreshing a rotating token shortly before it expires).
    """

    def __init__(
        self,
        base: WebClient,
        store: EncryptedInstallationStore | None = None,
        *,
        client_id: str | None = None,
        client_secret: str | None = None,
    ) -> None:
        self._base = base
        self._store = store
        self._rotator = (
            TokenRotator(client_id=client_id, client_secret=client_secret, client=base)
            if store is not None and client_id and client_secret
            else None
        )
        self._lock = threading.Lock()
        self._cache: dict[tuple[str | None, str], tuple[str, WebClient]] = {}

    @property
    def base(self) -> WebClient:
        """The client without a workspace (single-workspace mode: the bot's client)."""
        return self._base

    def for_team(self, team_id: str, enterprise_id: str | None = None) -> WebClient:
        """The client for `team_id`; raises LookupError when the workspace is not installed."""
        if self._store is None:
            return self._base
        bot = self._store.find_bot(enterprise_id=enterprise_id, team_id=team_id)
        if bot is None and enterprise_id:
            bot = self._store.find_bot(
                enterprise_id=enterprise_id, team_id=None, is_enterprise_install=True
            )
        if bot is None or not bot.bot_token:
            raise LookupError(f"workspace {team_id} is not installed")
        if self._rotator is not None and bot.bot_refresh_token:
            refreshed = self._rotator.perform_bot_token_rotation(
                bot=bot, minutes_before_expiration=10
            )
            if refreshed is not None:
                self._store.save_bot(refreshed)
                bot = refreshed
        key = (enterprise_id, team_id)
        with self._lock:
            cached = self._cache.get(key)
            if cached and cached[0] == bot.bot_token:
                return cached[1]
            client = WebClient(
                token=bot.bot_token,
                base_url=self._base.base_url,
                timeout=self._base.timeout,
                retry_handlers=list(self._base.retry_handlers or []),
            )
            self._cache[key] = (bot.bot_token, client)
            return client
