"""Errors raised by connectors.

Tree::

    ConnectorError
     ├── ConnectorUnavailable   transient (network, timeout, 5xx, 429): retry on the next tick
     └── ConnectorRejected      permanent (bad token, 4xx, schema mismatch): a human must act
          └── ConnectorAuthError  the token was refused (401/403); the message says what to do

Messages never contain tokens, task payloads or texts: counts, ids and HTTP status only.
"""

from __future__ import annotations

__all__ = ["ConnectorAuthError", "ConnectorError", "ConnectorRejected", "ConnectorUnavailable"]


class ConnectorError(Exception):
    """Base class for every error a connector raises."""


class ConnectorUnavailable(ConnectorError):
    """The tool could not be reached or answered 5xx/429; safe to retry later."""


class ConnectorRejected(ConnectorError):
    """The tool refused the request; retrying the same request will fail again."""


class ConnectorAuthError(ConnectorRejected):
    """The credentials were refused."""
