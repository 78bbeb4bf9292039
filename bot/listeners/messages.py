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


MessageHandler = Callable[[MessageEvent], None]


@dataclass(frozen=True)
class _Route:
    subtype: str
    kinds: frozenset[str] | None  # None: every kind, also when the event names none
    handler: MessageHandler


class MessageRouter:
    """Dispatches each `message` event to the handlers registered for its kind and subtype;
    an event nobody registered for is acknowledged and ignored."""

    def __init__(self) -> None:
        self._routes: list[_Route] = []

    def on(
        self, subtype: str, handler: MessageHandler, *, kinds: Iterable[str] | None = None
    ) -> None:
        """Run `handler` for message events of `subtype` (NEW: plain new messages) in the
        conversations of `kinds` (default: all). Raises ValueError for an unknown kind."""
        wanted = None if kinds is None else frozenset(kinds)
        if wanted is not None and not wanted <= set(KINDS):
            raise ValueError(f"unknown conversation kinds: {sorted(wanted - set(KINDS))}")
        self._routes.append(_Route(subtype, wanted, handler))

    def handlers_for(self, kind: str, subtype: str) -> list[MessageHandler]:
        """The handlers an event of `kind` and `subtype` reaches, in registration order."""
        return [
            r.handler
            for r in self._routes
            if r.subtype == subtype and (r.kinds is None or kind in r.kinds)
        ]

    def dispatch(self, event: dict[str, Any], team_id: str) -> None:
        """Run every handler for `event`; if one raises, the others still run and the first
        error is raised afterwards (Bolt's error handler logs it)."""
        message = MessageEvent(
            team_id=team_id,
            channel=event.get("channel", ""),
            kind=event.get("channel_type") or "",
            subtype=event.get("subtype") or NEW,
            event=event,
        )
        failure: Exception | None = None
        for handler in self.handlers_for(message.kind, message.subtype):
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
            self.dispatch(event, team_of(body, context.team_id))
