"""What the command modules share: the one-line error, window arguments, opening the store."""

from __future__ import annotations

import argparse
from datetime import date, datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the command line's start-up imports this module: the database and engine load when used
    from bff.store.db import Store
    from engine import WindowSpec

EXIT_BAD_INPUT = 2
EXIT_INFRASTRUCTURE = 3


class BadInputError(Exception):
    """Input the user must fix; printed as one line (line breaks in the message are joined), exit code 2."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split("\n")) if "\n" in message else message)


class InfrastructureError(Exception):
    """A service failed (the database went away); nothing was half-done; printed as one line, exit code 3."""


def bound(text: str) -> int | date:
    """An ISO instant with an offset (as ms), or a date (local midnight in the patient's zone)."""
    text = text.strip()
    try:
        if len(text) == 10:
            return date.fromisoformat(text)
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise BadInputError(f"{text!r} is neither a date (YYYY-MM-DD) nor an ISO 8601 instant with an offset") from None
    if moment.tzinfo is None:
        raise BadInputError(f"{text!r} has no UTC offset: add one, or give a date (local midnight in --tz)")
    return int(moment.timestamp() * 1000)


def window_from(args: argparse.Namespace) -> WindowSpec:
    from engine import WindowSpec  # noqa: PLC0415 - see the imports above

    if (args.start is None) != (args.end is None):
        raise BadInputError("--from and --to go together")
    if args.start is not None:
        if args.days is not None:
            raise BadInputError("use either --from/--to or --days, not both")
        return WindowSpec(start=bound(args.start), end=bound(args.end))
    return WindowSpec(days=args.days or 14)


def open_store() -> Store:
    from sqlalchemy.exc import DBAPIError  # noqa: PLC0415 - see the imports above

    from bff.settings import get_settings  # noqa: PLC0415
    from bff.store.db import SchemaError, Store  # noqa: PLC0415

    try:
        return Store(get_settings())
    except SchemaError as exc:
        raise BadInputError(str(exc)) from None
    except DBAPIError as exc:  # the database is down or refuses the connection
        raise InfrastructureError(
            f"cannot open the database ({type(exc.orig).__name__}): nothing was done; run the command again "
            "once it is reachable"
        ) from None
