"""The errors a SensorThings request can meet: each one status code and one line that says what to do."""


class StaError(Exception):
    """Answered as {"type": "error", "code": status, "message": message}; never a traceback."""

    status = 400

    def __init__(self, message, status=None, headers=None):
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        self.headers = headers or {}


class BadRequest(StaError):
    status = 400


class NotFound(StaError):
    status = 404


class NotImplementedOption(StaError):
    status = 501
