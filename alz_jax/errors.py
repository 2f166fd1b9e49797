"""Errors a user can fix; the command-line entry points print them without a traceback."""


class UserError(Exception):
    """A problem with the user's input (config, data, workdir); the message says how to fix it."""
