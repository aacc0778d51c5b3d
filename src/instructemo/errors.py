"""The one exception type for mistakes a user can make and fix."""


class UserError(Exception):
    """A problem with the user's config, data or paths.

    The CLI prints its message on one line, without a traceback. The message
    says what is wrong and how to fix it. Bugs raise anything else.
    """
