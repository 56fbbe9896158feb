"""Entry point: configure logging once, then hand over to the CLI."""

from __future__ import annotations

import logging.config
import os
import sys

__all__ = ["configure_logging", "main"]


_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
_FORMATS = ("human", "json")
_OURS = ("daemon", "connectors", "models", "strategies")  # the packages LABELLOOP_LOG_LEVEL=DEBUG is for


def configure_logging(level: str | None = None) -> None:
    """Human-readable lines on a terminal, JSON lines otherwise (or with LABELLOOP_LOG_FORMAT=json).

    DEBUG is for our own packages: other libraries stay at INFO (faker, which label-studio-sdk loads,
    wrote 46 lines of locale lookups on every command that connects; matplotlib and PIL do the same),
    except httpx, whose INFO line per request (method, URL, status) shows what Label Studio was asked.

    Raises:
        SystemExit: 2 with one line, for a LABELLOOP_LOG_LEVEL or LABELLOOP_LOG_FORMAT that is no
            level or format (a bogus level died in a traceback from logging.config, QA).
    """
    chosen = (level or os.environ.get("LABELLOOP_LOG_LEVEL", "INFO")).upper()
    fmt = (os.environ.get("LABELLOOP_LOG_FORMAT") or ("human" if sys.stderr.isatty() else "json")).lower()
    for name, value, allowed in (("LABELLOOP_LOG_LEVEL", chosen, _LEVELS), ("LABELLOOP_LOG_FORMAT", fmt, _FORMATS)):
        if value not in allowed:
            sys.stderr.write(f"error: {name}={value!r} is not one of {', '.join(allowed)}\n")
            raise SystemExit(2)
    formatter = (
        {"()": "daemon.logfmt.JsonFormatter"}
        if fmt == "json"
        else {"format": "%(asctime)s %(levelname)-7s %(name)s: %(message)s", "datefmt": "%H:%M:%S"}
    )
    logging.config.dictConfig({
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"main": formatter},
        "filters": {"expected_skips": {"()": "daemon.logfmt.ExpectedSkips"}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "main", "stream": "ext://sys.stderr",
                                "filters": ["expected_skips"]}},
        "root": {"level": "INFO" if chosen == "DEBUG" else chosen, "handlers": ["stderr"]},
        "loggers": {
            **{name: {"level": chosen} for name in _OURS},
            "apscheduler": {"level": "WARNING"},
            "faker": {"level": "WARNING"},
            "httpx": {"level": "INFO" if chosen == "DEBUG" else "WARNING"},
            "httpcore": {"level": "WARNING"},
            "urllib3": {"level": "WARNING"},
            "transformers": {"level": "ERROR"},
            "ray": {"level": "WARNING"},
            "ray.data": {"level": "WARNING"},
        },
    })


def main() -> None:
    # transformers' weight-loading bar is noise in a service log; switchable only process-wide.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    # Before torch loads libgomp: on shared cores its default spin-waiting made the proxy head's
    # pass over a 1M pool 4-5x slower (10-12 s instead of 1.4-2.7 s, 2 threads, load ~5).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    configure_logging()
    from daemon.cli import app

    app()


if __name__ == "__main__":
    main()
