"""What the terminal shows: one line per log record, never a traceback (the Prefect run log keeps those)."""

from __future__ import annotations

import logging
import re
import sys

from tasks.errors import SlmopsError

MAX_CHARS = 300
STATE_LINE = re.compile(r"^(Finished in state \w+)\((.{80,})\)$", re.S)


class ConsoleFormatter(logging.Formatter):
    """Formats a copy of each record without its traceback, cut to its first line and ``MAX_CHARS``,
    prefixed with the Prefect task or flow run it comes from.

    Prefect's API handler sees the original record first (it sits on the flow/task-run loggers), so the
    run log in the Prefect UI keeps the whole message and traceback.
    """

    def format(self, record: logging.LogRecord) -> str:
        """One terminal line for ``record``."""
        copy = logging.makeLogRecord(record.__dict__)
        message = STATE_LINE.sub(r"\1 (reason below and in the Prefect run log)", copy.getMessage())
        first = message.splitlines()[0] if message else ""
        if len(first) > MAX_CHARS:
            first = first[:MAX_CHARS].rstrip()
        if first != message:
            first += " …"
        run = getattr(copy, "task_run_name", None) or getattr(copy, "flow_run_name", None)
        copy.msg, copy.args = (f"{run}: {first}" if run else first), None
        copy.exc_info = copy.exc_text = copy.stack_info = None
        return super().format(copy)


class HideUserErrors(logging.Filter):
    """Drop Prefect's records of a run failing with one of our errors: the CLI prints that error as one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        """False for a Prefect record carrying a SlmopsError."""
        error = record.exc_info[1] if record.exc_info else None
        return not (isinstance(error, SlmopsError) and record.name.startswith("prefect"))


class ConsoleHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time of each record (it may be replaced, e.g. by tests)."""

    def __init__(self) -> None:
        super().__init__()
        self.addFilter(HideUserErrors())
        self.setFormatter(ConsoleFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def setup_console_logging(level: int = logging.INFO) -> None:
    """Send log records to the terminal through one ``ConsoleHandler`` (replacing Prefect's console handler)."""
    from prefect.logging.handlers import PrefectConsoleHandler

    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, ConsoleHandler | PrefectConsoleHandler):
            root.removeHandler(handler)
    root.addHandler(ConsoleHandler())
    root.setLevel(level)
    for noisy in ("httpx", "httpcore", "alembic", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
