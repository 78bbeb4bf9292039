"""Log hygiene for the Slack libraries: Bolt and slack_sdk put request bodies, OAuth codes and
API payloads into their log messages (a badly signed request's whole body, a failed code
exchange's code). A record of their loggers keeps what happened — the message up to its first
detail — plus the ids worth having (Slack's error code, the Web API method); the rest is
withheld. This depends on no message's wording, so it holds across library versions.
"""

from __future__ import annotations

import logging
import re

# A library message's details start at the first of these: "Invalid request signature
# detected (signature: …, body: …)", "Failed to fetch oauth.v2.access result with code: …".
_DETAILS = re.compile(r"[(:{\[]")
_SLACK_ERROR = re.compile(r"""['"]error['"]\s*:\s*['"]([a-z0-9_]{1,64})['"]""")
_API_METHOD = re.compile(r"/api/([a-z]+(?:\.[A-Za-z0-9]+)+)")
MAX_CHARS = 200


class WithholdDetails(logging.Filter):
    """Rewrites a record to what happened, without what it happened to."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Always keeps the record; replaces its message when it carries details."""
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a broken format string: keep nothing of it
            message = "(unformattable log message)"
        head = _DETAILS.split(message, maxsplit=1)[0].strip(" -,.")
        if head == message and len(message) <= MAX_CHARS:
            return True
        kept = [f"Slack error {e}" for e in dict.fromkeys(_SLACK_ERROR.findall(message))][:3]
        kept += [f"method {m}" for m in dict.fromkeys(_API_METHOD.findall(message))][:3]
        record.msg = f"{head[:MAX_CHARS]} (details withheld{'; ' if kept else ''}{', '.join(kept)})"
        record.args = None
        return True


_FILTER = WithholdDetails()


def withhold_details(*loggers: logging.Logger) -> None:
    """Install the filter on these loggers (once each). Bolt copies the filters of the logger
    given to `App(logger=...)` onto every logger it makes from it, so install there first."""
    for logger in loggers:
        logger.addFilter(_FILTER)  # a filter already there is not added twice
