"""The one error type users can cause and fix themselves."""

from __future__ import annotations


class UserError(ValueError):
    """A one-line, user-fixable error: names the file or flag, the field, and the fix.

    Command-line entry points catch it, print ``error: <message>`` to stderr and exit with code 2.
    """
