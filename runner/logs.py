"""structlog set-up: readable lines on a terminal, JSON lines in a file, secrets redacted.

Library modules only call ``structlog.get_logger(__name__)``; whoever runs the job (the CLI
or ``run_all``) calls ``configure`` once with the file to write and the secrets to hide.
The run's notices (the ``runner.notice`` logger: the banner, rows not done, a stop, the
closing line) reach the console as plain lines, without a time stamp or a level tag.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Iterable, MutableMapping
from pathlib import Path
from typing import Any, TextIO

import structlog

REDACTED = "[redacted]"
_SENSITIVE_KEYS = re.compile(r"authorization|api[_-]?key|secret|token|password", re.I)
# "Bearer <token>" as written in headers, logs, URL-encoded or JSON-escaped text
_BEARER = re.compile(r"(Bearer(?:\s|%20|\\[nrt])+)[A-Za-z0-9._~+/=\-]+", re.I)
_SK = re.compile(r"\bsk-[A-Za-z0-9_\-]{8,}")  # the shape of DashScope (and OpenAI) keys
_MIN_SECRET = 4  # shorter "secrets" would redact ordinary words
NOTICE_LOGGER = "runner.notice"  # the lines a person must read, shown as they are
NOTICES = logging.getLogger(NOTICE_LOGGER)  # library code says such a line through it

# Every key this process was given (configure, Settings.key): scrub_text removes them all.
_known: set[str] = set()


def add_secrets(*secrets: str | None) -> None:
    """Register keys that scrub_text must remove, wherever they turn up."""
    for secret in secrets:
        if secret and len(secret.strip()) >= _MIN_SECRET:
            _known.add(secret.strip())


def _secrets() -> list[str]:
    found = set(_known)
    env = os.environ.get("DASHSCOPE_API_KEY", "").strip()
    if len(env) >= _MIN_SECRET:
        found.add(env)
    return sorted(found, key=len, reverse=True)  # a longer secret before its prefix


def scrub_text(text: str) -> str:
    """``text`` without the configured key (and the environment's), anything shaped like an
    ``sk-...`` key, or a ``Bearer ...`` token. For every text that came from the network
    before it is logged, journaled or rendered."""
    if not text:
        return text
    for secret in _secrets():
        if secret in text:
            text = text.replace(secret, REDACTED)
    if "sk-" in text:
        text = _SK.sub(REDACTED, text)
    if "earer" in text or "EARER" in text:
        text = _BEARER.sub(r"\1" + REDACTED, text)
    return text


def scrub_value(value: Any) -> Any:
    """scrub_text applied to every string inside a JSON-like value (dicts, lists, tuples)."""
    if isinstance(value, str):
        return scrub_text(value)
    if isinstance(value, dict):
        return {k: scrub_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(scrub_value(v) for v in value)
    return value


class Redactor:
    """A structlog processor that removes secrets from every value before rendering."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self.secrets = [s for s in secrets if s and len(s) >= 4]
        add_secrets(*self.secrets)

    def scrub(self, value: Any) -> Any:
        if isinstance(value, str):
            return scrub_text(value)
        if isinstance(value, dict):
            return {
                k: (
                    REDACTED if _SENSITIVE_KEYS.search(str(k)) and k != "task_id" else self.scrub(v)
                )
                for k, v in value.items()
            }
        if isinstance(value, list | tuple):
            return type(value)(self.scrub(v) for v in value)
        if isinstance(value, BaseException):  # its text may carry a response body
            text = str(value)
            clean = scrub_text(text)
            return value if clean == text else f"{type(value).__name__}: {clean}"
        return value

    def __call__(
        self, logger: Any, name: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        for key in list(event_dict):
            if _SENSITIVE_KEYS.search(key) and key != "task_id":
                event_dict[key] = REDACTED
            elif key == "exc_info":  # the renderers need the exception itself
                continue
            else:
                event_dict[key] = self.scrub(event_dict[key])
        return event_dict


_redactor = Redactor()


def redactor() -> Redactor:
    return _redactor


def configure(
    log_file: Path | None = None,
    *,
    secrets: Iterable[str] = (),
    console: TextIO | None = sys.stderr,
    console_level: int = logging.WARNING,
) -> None:
    """Route structlog through stdlib logging to a console handler and a JSON file."""
    global _redactor
    _redactor = Redactor(secrets)
    shared: list[Any] = [
        structlog.stdlib.filter_by_level,  # a disabled level costs nothing past this
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _redactor,
    ]
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    root = logging.getLogger()
    _detach()
    root.setLevel(logging.INFO)
    # third-party chatter (aiohttp access logs, the SDK) stays out of the console
    for noisy in ("aiohttp.access", "asyncio", "urllib3", "dashscope", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    foreign = [
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(fmt="iso"),
        _redactor,
    ]
    if console is not None:
        ch = logging.StreamHandler(console)
        ch.setLevel(console_level)
        ch.setFormatter(
            structlog.stdlib.ProcessorFormatter(
                processor=structlog.dev.ConsoleRenderer(colors=console.isatty()),
                foreign_pre_chain=foreign,
            )
        )
        ch.addFilter(lambda record: record.name != NOTICE_LOGGER)  # shown plain, below
        ch._runner = True  # type: ignore[attr-defined]
        root.addHandler(ch)
        nh = logging.StreamHandler(console)
        nh.setLevel(logging.INFO)
        nh.setFormatter(_PlainNotice())
        nh._runner = True  # type: ignore[attr-defined]
        notices = logging.getLogger(NOTICE_LOGGER)
        notices.setLevel(logging.INFO)
        notices.addHandler(nh)  # and on to the root's file handler
    if log_file is not None:
        try:
            log_file.parent.mkdir(parents=True, exist_ok=True)
            fh = _LogFile(log_file, encoding="utf-8", complaints=console or sys.stderr)
        except OSError as exc:  # one line naming the file, not a traceback
            from runner.errors import SettingsError

            raise SettingsError(f"cannot write {log_file}: {exc.strerror or exc}") from None
        fh.setLevel(logging.INFO)
        fh.setFormatter(
            structlog.stdlib.ProcessorFormatter(
                processor=structlog.processors.JSONRenderer(ensure_ascii=False),
                foreign_pre_chain=foreign,
            )
        )
        fh._runner = True  # type: ignore[attr-defined]
        root.addHandler(fh)


class _LogFile(logging.FileHandler):
    """run.log: a write that fails (a full disk) is said once, in one line, not as logging's
    traceback; the run goes on, and later lines are written again once they can be."""

    def __init__(self, path: Path, *, encoding: str, complaints: TextIO) -> None:
        super().__init__(path, encoding=encoding)
        self.complaints = complaints
        self.said = False

    def handleError(self, record: logging.LogRecord | None) -> None:
        if self.said:
            return
        self.said = True
        exc = sys.exc_info()[1]
        why = getattr(exc, "strerror", None) or (type(exc).__name__ if exc else "error")
        try:
            self.complaints.write(
                f"warning: cannot write {self.baseFilename} ({why}); the run goes on, "
                "its log may miss lines\n"
            )
            self.complaints.flush()
        except (OSError, ValueError):
            pass


    def flush(self) -> None:
        try:
            super().flush()
        except OSError:
            self.handleError(None)

    def close(self) -> None:
        try:
            super().close()
        except OSError:  # its last lines did not fit either: said once already
            self.handleError(None)


class _PlainNotice(logging.Formatter):
    """A notice as its own line, secrets removed."""

    def format(self, record: logging.LogRecord) -> str:
        return scrub_text(record.getMessage())


def _detach() -> None:
    for logger in (logging.getLogger(), logging.getLogger(NOTICE_LOGGER)):
        for handler in list(logger.handlers):
            if getattr(handler, "_runner", False):
                logger.removeHandler(handler)
                handler.close()


def close() -> None:
    """Detach and close the handlers ``configure`` added (files are released)."""
    _detach()
