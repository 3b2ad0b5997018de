"""Date parts for the ``date`` and ``currentdate`` tests (RFC 5260 4 and 5)."""

from __future__ import annotations

import email.utils
import re
from datetime import date, datetime, timedelta, timezone

_ZONE = re.compile(r"([+-])([0-9]{2})([0-9]{2})\Z")
_MJD_EPOCH = date(1858, 11, 17).toordinal()  # RFC 5260 4.2 "julian": the Modified Julian Day


def parse_zone(text: str):
    m = _ZONE.match(text.strip())
    if not m or int(m.group(3)) > 59:
        return None
    minutes = int(m.group(2)) * 60 + int(m.group(3))
    return timezone(timedelta(minutes=-minutes if m.group(1) == "-" else minutes))


def header_date(value: str, name: str) -> datetime | None:
    """An RFC 5322 date-time: the whole field, or what follows its last ";" (RFC 5260 4: both
    MUST be supported, whatever the field; Received always uses the latter)."""
    if name.lower() == "received":
        return _parse_date(value.rpartition(";")[2])
    found = _parse_date(value)
    if found is None and ";" in value:
        found = _parse_date(value.rpartition(";")[2])
    return found


def _parse_date(value: str) -> datetime | None:
    try:
        parts = email.utils.parsedate_tz(value)
        if parts is None:
            return None
        offset = parts[9] or 0
        return datetime(*parts[:5], min(parts[5], 59), tzinfo=timezone(timedelta(seconds=offset)))
    except (ValueError, OverflowError, TypeError, IndexError):
        return None


def current_date(now: float) -> datetime:
    return datetime.fromtimestamp(now, timezone.utc)


def _zone_text(when: datetime) -> str:
    offset = int(when.utcoffset().total_seconds() // 60)
    sign = "-" if offset < 0 else "+"
    return f"{sign}{abs(offset) // 60:02d}{abs(offset) % 60:02d}"


def date_part(when: datetime, part: str, zone) -> str | None:
    """``zone``: a tzinfo (:zone), "original" (:originalzone), or None (the local zone)."""
    if zone is None:
        when = when.astimezone()
    elif zone != "original":
        when = when.astimezone(zone)
    if part == "year":
        return f"{when.year:04d}"
    if part == "month":
        return f"{when.month:02d}"
    if part == "day":
        return f"{when.day:02d}"
    if part == "date":
        return f"{when.year:04d}-{when.month:02d}-{when.day:02d}"
    if part == "julian":
        return str(when.date().toordinal() - _MJD_EPOCH)
    if part == "hour":
        return f"{when.hour:02d}"
    if part == "minute":
        return f"{when.minute:02d}"
    if part == "second":
        return f"{when.second:02d}"
    if part == "time":
        return f"{when.hour:02d}:{when.minute:02d}:{when.second:02d}"
    if part == "iso8601":  # RFC 5260 4.2: RFC 3339 date-time, a zero offset written "Z"
        text = when.replace(microsecond=0).isoformat()
        return text[:-6] + "Z" if text.endswith("+00:00") else text
    if part == "std11":
        return email.utils.format_datetime(when.replace(microsecond=0))
    if part == "zone":
        return _zone_text(when)
    if part == "weekday":
        return str((when.weekday() + 1) % 7)  # 0 is Sunday
    return None
