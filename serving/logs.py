"""The server log carries no patient data: a filter on BentoML's loggers drops request values from exceptions."""

from __future__ import annotations

import logging

from serving.compat.bentoml import SERVER_LOGGERS


class _NoRequestData(logging.Filter):
    """Drop exception details that would carry request values into the server log.

    BentoML logs a request's pydantic ValidationError with its traceback, and
    pydantic's message echoes the offending input values (patient data). The
    client gets the details in the 422 body; the log keeps path and method.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None:
            name = type(record.exc_info[1]).__name__
            if name in {"ValidationError", "LabValueError", "LabParseError", "JSONDecodeError"}:
                record.exc_info, record.exc_text = None, None
                record.msg = f"{record.msg} (invalid request; details sent to the client, not logged)"
        return True


def _protect_logs() -> None:
    for name in SERVER_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _NoRequestData) for f in logger.filters):
            logger.addFilter(_NoRequestData())
    # BentoML's server log shows warnings only; what the service loaded is worth a line.
    logging.getLogger("responders").setLevel(logging.INFO)
