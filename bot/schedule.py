"""The weekly digest schedule: `mon 09:00 Europe/Berlin` → the last time it was due."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


@dataclass(frozen=True)
class Schedule:
    """A weekday, a time of day and a time zone."""

    weekday: int
    hour: int
    minute: int
    zone: ZoneInfo

    def last_due(self, now: datetime) -> datetime:
        """The most recent scheduled moment at or before `now` (aware, in UTC terms)."""
        local = now.astimezone(self.zone)
        due = local.replace(hour=self.hour, minute=self.minute, second=0, microsecond=0)
        due -= timedelta(days=(local.weekday() - self.weekday) % 7)
        if due > local:
            due -= timedelta(days=7)
        return due


def parse_schedule(text: str) -> Schedule:
    """Parse `DAY HH:MM [ZONE]` (zone defaults to UTC); ValueError says what is expected."""
    parts = text.split()
    expected = "must look like `mon 09:00 Europe/Berlin` (day, 24h time, IANA time zone)"
    if len(parts) not in (2, 3) or parts[0][:3].lower() not in _DAYS or ":" not in parts[1]:
        raise ValueError(expected)
    hour, _, minute = parts[1].partition(":")
    if not (hour.isdigit() and minute.isdigit() and int(hour) < 24 and int(minute) < 60):
        raise ValueError(expected)
    try:
        zone = ZoneInfo(parts[2] if len(parts) == 3 else "UTC")
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(expected) from None
    return Schedule(_DAYS.index(parts[0][:3].lower()), int(hour), int(minute), zone)
