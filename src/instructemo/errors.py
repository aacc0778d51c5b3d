"""The one exception type for mistakes a user can make and fix, and how its messages show a list."""

from collections.abc import Iterable

# A message or log line shows at most this many items of a list: a file may hold thousands.
SHOWN_ITEMS = 10


def shown(items: Iterable, limit: int = SHOWN_ITEMS) -> str:
    """Items joined by commas, the first `limit` of them and how many more: "a, b, c, ... (9,997 more)"."""
    items = [str(item) for item in items]
    more = len(items) - limit
    return ", ".join(items[:limit]) + (f", ... ({more:,} more)" if more > 0 else "")


class UserError(Exception):
    """A problem with the user's config, data or paths.

    The CLI prints its message on one line, without a traceback. The message
    says what is wrong and how to fix it. Bugs raise anything else.
    """
