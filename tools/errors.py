"""The one exception a user should ever see: a one-line message that says what to do."""


class UserError(Exception):
    """Printed as `openpole: <message>` with exit status 2, never with a traceback."""
