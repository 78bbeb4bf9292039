"""The one listener for Slack's `message` events, and the table it dispatches by.

Bolt runs only the first listener that matches an event, so a second `@app.event("message")`
would never run. Everything that wants message events registers here instead: a handler for a
subtype (`NEW` for a plain new message, else Slack's subtype, e.g. `message_changed`) in some
kinds of conversation (the event's `channel_type`: channel, group, im, mpim). Every matching
handler runs, in the order they were registered.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from slack_bolt import App, BoltContext

from bot.transcript import is_own
from bot.workspace import team_of

NEW = ""  # the subtype of a plain new message (Slack sends none)
KINDS = ("channel", "group", "im", "mpim")  # Slack's `channel_type` of a message event


@dataclass(frozen=True)
class MessageEvent:
    """A `message` event as handlers see it."""

    team_id: str
    channel: str
    kind: str  # channel_type; "" when Slack names none (edits and deletions may not)
    subtype: str  # NEW for a plain new message
    event: dict[str, Any]
    own: bool = False  # the bot wrote it (or, for an edit or deletion, the message it changes)


MessageHandler = Callable[[MessageEvent], None]


@dataclass(frozen=True)
class _Route:
    subtype: str
    kinds: frozenset[str] | None  # None: every kind, also when the event names none
    handler: MessageHandler
    own: bool  # also the bot's own messages


def event_of(body: Any) -> dict[str, Any] | None:  # noqa: ANN401 - a request body, any JSON
    """The inner event of an Events API callback; None for any other request."""
    if not isinstance(body, dict) or body.get("type") != "event_callback":
        return None
    event = body.get("event")
    return event if isinstance(event, dict) else None


class MessageRouter:
    """Dispatches each `message` event to the handlers registered for its kind and subtype;
    an event nobody registered for is acknowledged and ignored."""

    def __init__(self) -> None:
        self._routes: list[_Route] = []

    def on(
        self,
        subtype: str,
        handler: MessageHandler,
        *,
        kinds: Iterable[str] | None = None,
        own: bool = False,
    ) -> None:
        """Run `handler` for message events of `subtype` (NEW: plain new messages) in the
        conversations of `kinds` (default: all); `own`: also for the bot's own messages.
        Raises ValueError for an unknown kind."""
        wanted = None if kinds is None else frozenset(kinds)
        if wanted is not None and not wanted <= set(KINDS):
            raise ValueError(f"unknown conversation kinds: {sorted(wanted - set(KINDS))}")
        self._routes.append(_Route(subtype, wanted, handler, own))

    def handlers_for(self, kind: str, subtype: str, own: bool = False) -> list[MessageHandler]:
        """The handlers an event of `kind` and `subtype` reaches, in registration order."""
        return [
            r.handler
            for r in self._routes
            if r.subtype == subtype and (r.kinds is None or kind in r.kinds) and (r.own or not own)
        ]

    def dispatch(
        self,
        event: dict[str, Any],
        team_id: str,
        bot_user_id: str = "",
        bot_id: str | None = None,
    ) -> None:
        """Run every handler for `event`; if one raises, the others still run and the first
        error is raised afterwards (Bolt's error handler logs it)."""
        message = MessageEvent(
            team_id=team_id,
            channel=event.get("channel", ""),
            kind=event.get("channel_type") or "",
            subtype=event.get("subtype") or NEW,
            event=event,
            own=by_bot(event, bot_user_id, bot_id),
        )
        failure: Exception | None = None
        for handler in self.handlers_for(message.kind, message.subtype, message.own):
            try:
                handler(message)
            except Exception as exc:  # noqa: BLE001 - re-raised below, after the others ran
                failure = failure or exc
        if failure is not None:
            raise failure

    def attach(self, app: App) -> None:
        """Make this router `app`'s one listener for `message` events."""

        @app.event("message")
        def on_message(event: dict[str, Any], body: dict[str, Any], context: BoltContext) -> None:
            self.dispatch(
                event, team_of(body, context.team_id), context.bot_user_id or "", context.bot_id
            )


def by_bot(event: dict[str, Any], bot_user_id: str, bot_id: str | None) -> bool:
    """Whether the bot wrote a message event's message (for an edit, the edited message; for
    a deletion, the deleted one as Slack sends it)."""
    inner = event.get("message") or event.get("previous_message")
    if is_own(event, bot_user_id, bot_id):
        return True
    return isinstance(inner, dict) and is_own(inner, bot_user_id, bot_id)
