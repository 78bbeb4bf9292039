"""Workspaces: OAuth installations (tokens encrypted at rest) and the Web API client for each.

One bot token (SLACK_BOT_TOKEN) serves one workspace. With SLACK_CLIENT_ID/SECRET, every
workspace installs through Slack's OAuth flow and its tokens live in `slack_installations` /
`slack_bots` (Bolt's tables, owned by our migrations), encrypted with ENCRYPTION_KEY.
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import hashlib
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from slack_bolt import BoltContext
from slack_bolt.authorization import AuthorizeResult
from slack_bolt.authorization.authorize import Authorize
from slack_sdk import WebClient
from slack_sdk.errors import SlackTokenRotationError
from slack_sdk.oauth.installation_store.models.bot import Bot
from slack_sdk.oauth.installation_store.models.installation import Installation
from slack_sdk.oauth.installation_store.sqlalchemy import SQLAlchemyInstallationStore
from slack_sdk.oauth.state_store.sqlalchemy import SQLAlchemyOAuthStateStore
from slack_sdk.oauth.token_rotation import TokenRotator
from sqlalchemy import Engine, select, text, update

from bot.config import Settings, SettingsError
from bot.store.models import Base, slack_bots, slack_installations, slack_oauth_states

log = logging.getLogger(__name__)

PREFIX = "enc1:"
_TOKEN_FIELDS = ("bot_token", "bot_refresh_token", "user_token", "user_refresh_token")


class TokenUnreadable(ValueError):
    """A stored token cannot be decrypted: ENCRYPTION_KEY is missing or not the key it was
    stored with. `workspace` is the team (or org) id when known."""

    def __init__(self, cause: str, workspace: str | None = None) -> None:
        super().__init__(f"workspace {workspace}: {cause}" if workspace else cause)
        self.cause = cause
        self.workspace = workspace


def check_token_encryption(settings: Settings) -> str | None:
    """Start-up: in OAuth mode without ENCRYPTION_KEY, the warning to log once (tokens are stored
    in plain text); SettingsError instead when REQUIRE_ENCRYPTION is set. None when all is well."""
    if not settings.oauth or settings.encryption_key is not None:
        return None
    if settings.require_encryption:
        raise SettingsError(
            "REQUIRE_ENCRYPTION is set but ENCRYPTION_KEY is not: set ENCRYPTION_KEY "
            "(docs/SECURITY.md) so installed workspaces' tokens are stored encrypted"
        )
    return (
        "ENCRYPTION_KEY is not set: bot and refresh tokens of installed workspaces are stored in "
        "plain text; set it and run `python -m bot rotate-key` (REQUIRE_ENCRYPTION=true "
        "refuses to start without it)"
    )


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
        """A usable token from its stored form; raises TokenUnreadable without the right key."""
        if value is None or not value.startswith(PREFIX):
            return value
        if self._fernet is None:
            raise TokenUnreadable("a stored token is encrypted but ENCRYPTION_KEY is not set")
        try:
            return self._fernet.decrypt(value[len(PREFIX) :].encode()).decode()
        except InvalidToken:
            raise TokenUnreadable(
                "a stored token cannot be decrypted with ENCRYPTION_KEY (not the key it was "
                "stored with)"
            ) from None

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


@dataclass
class TokenCensus:
    """Which workspaces (team, else org id) have stored tokens in plain text, readable with the
    key, or unreadable with it."""

    plain: set[str] = field(default_factory=set)
    readable: set[str] = field(default_factory=set)
    unreadable: set[str] = field(default_factory=set)


def token_census(engine: Engine, cipher: TokenCipher) -> TokenCensus:
    """Try every stored token with `cipher` (`python -m bot doctor`); nothing is changed."""
    census = TokenCensus()
    with engine.connect() as conn:
        for table, fields in (
            (slack_installations, _TOKEN_FIELDS),
            (slack_bots, ("bot_token", "bot_refresh_token")),
        ):
            cols = [table.c.team_id, table.c.enterprise_id, *(table.c[f] for f in fields)]
            for row in conn.execute(select(*cols)).all():
                workspace = row[0] or row[1] or "?"
                for value in row[2:]:
                    if not value:
                        continue
                    if not value.startswith(PREFIX):
                        census.plain.add(workspace)
                        continue
                    try:
                        cipher.decrypt(value)
                        census.readable.add(workspace)
                    except TokenUnreadable:
                        census.unreadable.add(workspace)
    return census


class OAuthStates(SQLAlchemyOAuthStateStore):
    """Bolt's OAuth state store on our `slack_oauth_states` table (10-minute states)."""

    def __init__(self, engine: Engine, expiration_seconds: int = 600) -> None:
        self.expiration_seconds = expiration_seconds
        self._logger = logging.getLogger(__name__)
        self.engine = engine
        self.metadata = Base.metadata
        self.oauth_states = slack_oauth_states


# A rotating bot token is refreshed this long before it expires.
_REFRESH_MINUTES = 10
# PostgreSQL: longest wait for another process that is refreshing the same workspace's token
# (its refresh is one Web API call, bounded by the client's timeout).
_PG_LOCK_WAIT = "60s"

_WorkspaceKey = tuple[str | None, str | None]  # (enterprise_id, team_id) of a stored bot


def _rotation_lock_id(client_id: str, enterprise_id: str | None, team_id: str | None) -> int:
    """A stable 63-bit PostgreSQL advisory-lock key for one workspace's token rotation (the same
    in every process, unlike hash())."""
    name = f"slack-bot-token-rotation\0{client_id}\0{enterprise_id or ''}\0{team_id or ''}"
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big") >> 1


@contextlib.contextmanager
def _pg_advisory_lock(engine: Engine, lock_id: int) -> Iterator[None]:
    """Hold a session-level advisory lock on a connection of its own for the block.

    No transaction stays open while it is held. If taking or releasing the lock fails, the
    connection is discarded: closing its session releases the lock, so a pooled connection
    never keeps it.
    """
    conn = engine.connect()
    try:
        # Transaction-local lock_timeout bounds the wait without changing the pooled session.
        conn.execute(
            text("SELECT set_config('lock_timeout', :wait, true)"), {"wait": _PG_LOCK_WAIT}
        )
        conn.execute(text("SELECT pg_advisory_lock(:id)"), {"id": lock_id})
        conn.commit()
    except BaseException as exc:
        log.error("token rotation lock not taken: %s", type(exc).__name__)
        conn.invalidate()
        conn.close()
        raise
    try:
        yield
    finally:
        try:
            conn.execute(text("SELECT pg_advisory_unlock(:id)"), {"id": lock_id})
            conn.commit()
        except Exception as exc:  # noqa: BLE001 - dropping the session releases the lock
            log.warning("token rotation lock not released cleanly: %s", type(exc).__name__)
            conn.invalidate()
        finally:
            conn.close()


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive flock on `path` for the block (SQLite: processes sharing one database file
    share its directory). Without a usable lock file, the block runs unlocked: the in-process
    lock and the re-read after a rejected refresh token still apply."""
    try:
        fh = open(path, "a")  # closed by the with below
    except OSError as exc:
        log.warning("token rotation lock file unusable (%s): not locking", type(exc).__name__)
        yield
        return
    with fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _api_error(exc: SlackTokenRotationError) -> str | None:
    response = getattr(exc.api_error, "response", None)
    return response.get("error") if response is not None else None


def _is_newer(a: Bot, b: Bot) -> bool:
    """True when `a` is a later state of the workspace's bot than `b`: from a later install, or
    from the same install with a token that expires later (each refresh gives a later expiry)."""
    return (a.installed_at, a.bot_token_expires_at or 0) > (
        b.installed_at,
        b.bot_token_expires_at or 0,
    )


class SlackClients:
    """The Web API client to use for a workspace.

    Single-workspace mode returns the one client; OAuth mode builds a client from the
    workspace's installation (refreshing a rotating token shortly before it expires).

    Slack's refresh tokens are single-use, so one refresh per workspace at a time: threads
    queue on a per-workspace lock (one SlackClients per process), processes on a PostgreSQL
    advisory lock (SQLite: a lock file beside the database). Whoever gets the lock re-reads
    the store first and uses a token another process has already refreshed.
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
        self._lock = threading.Lock()  # guards _cache and _refresh_locks
        self._cache: dict[tuple[str | None, str], tuple[str, WebClient]] = {}
        self._refresh_locks: dict[_WorkspaceKey, threading.Lock] = {}

    @property
    def base(self) -> WebClient:
        """The client without a workspace (single-workspace mode: the bot's client)."""
        return self._base

    def bot_for(self, team_id: str | None, enterprise_id: str | None = None) -> Bot:
        """The workspace's installed bot (its org's, for an org-wide install) with a token that
        is not about to expire; raises LookupError when there is none (OAuth mode only)."""
        if self._store is None:
            raise LookupError("single-workspace mode has no installations")
        bot = self._find(team_id, enterprise_id)
        if bot is None or not bot.bot_token:
            raise LookupError(f"workspace {team_id or enterprise_id} is not installed")
        if self._needs_refresh(bot):
            bot = self._refresh(bot, team_id or enterprise_id or "")
        return bot

    def installed(self, team_id: str, enterprise_id: str | None = None) -> bool:
        """False when OAuth mode has no installation for the workspace (any longer)."""
        try:
            return self._store is None or self._find(team_id, enterprise_id) is not None
        except TokenUnreadable:
            return True  # stored, though ENCRYPTION_KEY cannot read it

    def _find(self, team_id: str | None, enterprise_id: str | None) -> Bot | None:
        """The workspace's stored bot, else its org's org-wide one."""
        assert self._store is not None
        bot = self._store.find_bot(enterprise_id=enterprise_id, team_id=team_id)
        if bot is None and enterprise_id:
            bot = self._store.find_bot(
                enterprise_id=enterprise_id, team_id=None, is_enterprise_install=True
            )
        return bot

    def for_team(self, team_id: str, enterprise_id: str | None = None) -> WebClient:
        """The client for `team_id`; raises LookupError when the workspace is not installed
        (or its rotating token can no longer be refreshed)."""
        if self._store is None:
            return self._base
        bot = self.bot_for(team_id, enterprise_id)
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
                logger=self._base.logger,  # its filters too (bot.logsafety)
            )
            self._cache[key] = (bot.bot_token, client)
            return client

    def _needs_refresh(self, bot: Bot) -> bool:
        return (
            self._rotator is not None
            and bool(bot.bot_refresh_token)
            and bot.bot_token_expires_at is not None
            and bot.bot_token_expires_at <= time.time() + _REFRESH_MINUTES * 60
        )

    def _reread(self, bot: Bot) -> Bot | None:
        assert self._store is not None
        return self._store.find_bot(
            enterprise_id=bot.enterprise_id,
            team_id=bot.team_id,
            is_enterprise_install=bot.is_enterprise_install,
        )

    @contextlib.contextmanager
    def _shared_lock(self, key: _WorkspaceKey) -> Iterator[None]:
        """Exclusion among processes for this workspace's refresh: a PostgreSQL advisory lock,
        or a lock file beside an SQLite database. Holds no database transaction (SQLite's
        writer lock is not re-entrant across connections)."""
        assert self._store is not None
        engine = self._store.engine
        backend = engine.url.get_backend_name()
        if backend == "postgresql":
            with _pg_advisory_lock(engine, _rotation_lock_id(self._store.client_id, *key)):
                yield
        elif backend == "sqlite" and engine.url.database not in (None, "", ":memory:"):
            with _file_lock(Path(f"{engine.url.database}.token-rotation.lock")):
                yield
        else:
            yield

    def _refresh(self, seen: Bot, team_id: str) -> Bot:
        """The bot with a fresh token: refreshed here, or by whoever held the lock before."""
        key = (seen.enterprise_id, seen.team_id)
        with self._lock:
            local = self._refresh_locks.setdefault(key, threading.Lock())
        with local:  # one thread of this process refreshes; the others wait, then re-read
            current = self._reread(seen)
            if current is not None and current.bot_token and not self._needs_refresh(current):
                log.debug("bot token of team=%s refreshed by another thread; using it", team_id)
                return current
            with self._shared_lock(key):
                return self._refresh_locked(seen, team_id)

    def _refresh_locked(self, seen: Bot, team_id: str) -> Bot:
        """Re-read, refresh if still needed, save: under both locks."""
        assert self._store is not None and self._rotator is not None
        current = self._reread(seen)
        if current is None or not current.bot_token:
            raise LookupError(f"workspace {team_id} is not installed")
        if not self._needs_refresh(current):
            log.info("bot token of team=%s refreshed by another process; using it", team_id)
            return current
        try:
            refreshed = self._rotator.perform_bot_token_rotation(
                bot=current, minutes_before_expiration=_REFRESH_MINUTES
            )
        except SlackTokenRotationError as exc:
            if _api_error(exc) != "invalid_refresh_token":
                log.error("bot token refresh for team=%s failed: %s", team_id, _api_error(exc))
                raise
            return self._after_used_refresh_token(current, team_id, exc)
        if refreshed is None:  # not a bot token in the answer: keep the current one
            return current
        latest = self._reread(current)
        if (
            latest is not None
            and latest.bot_token != current.bot_token
            and not _is_newer(refreshed, latest)
        ):
            # A writer that bypasses the lock (a reinstall, Bolt's own rotation) stored a newer
            # bot meanwhile: never overwrite it with ours.
            log.warning(
                "a newer bot token for team=%s was stored during the refresh; using it", team_id
            )
            return latest
        self._store.save_bot(refreshed)
        log.info("bot token of team=%s refreshed", team_id)
        return refreshed

    def _after_used_refresh_token(
        self, current: Bot, team_id: str, exc: SlackTokenRotationError
    ) -> Bot:
        """Slack refused the refresh token as already used: another process (one that bypasses
        the lock) has rotated it; its token is in the store unless it failed to save it."""
        latest = self._reread(current)
        if latest is not None and latest.bot_token and latest.bot_token != current.bot_token:
            log.info(
                "refresh token of team=%s already used by another process; using its token",
                team_id,
            )
            return latest
        log.error(
            "bot token refresh for team=%s failed: Slack says the refresh token was already "
            "used and no newer token is stored; the workspace must reinstall the app",
            team_id,
        )
        raise LookupError(f"workspace {team_id} has no usable bot token") from exc


class ClientsAuthorize(Authorize):
    """Bolt's authorize step through SlackClients: Bolt's own one would rotate tokens without
    the lock above (two hours before expiry, on every event), racing this process's refreshes
    and other processes'."""

    def __init__(self, clients: SlackClients) -> None:
        self._clients = clients

    def __call__(
        self,
        *,
        context: BoltContext,
        enterprise_id: str | None,
        team_id: str | None,
        user_id: str | None,
    ) -> AuthorizeResult | None:
        """The bot token and identity for the request's workspace, or None (not installed)."""
        try:
            bot = self._clients.bot_for(team_id, enterprise_id)
        except TokenUnreadable as exc:  # answered by the app's error handler (bot.app)
            raise TokenUnreadable(exc.cause, team_id or enterprise_id) from None
        except LookupError as exc:
            log.info("no installation for team=%s enterprise=%s: %s", team_id, enterprise_id, exc)
            return None
        return AuthorizeResult(
            enterprise_id=bot.enterprise_id or enterprise_id,
            team_id=team_id or bot.team_id,
            bot_token=bot.bot_token,
            bot_id=bot.bot_id,
            bot_user_id=bot.bot_user_id,
            bot_scopes=bot.bot_scopes,
            user_id=user_id,
        )
