"""The exceptions a handler can meet, one per kind of cause.

h11 splits LocalProtocolError (our bug) from RemoteProtocolError (their bad
input); httpcore maps transport errors once, where they enter its code. hijack
does the same at one boundary, the methods of :class:`~hijack.Request`:

* :class:`~hijack.HTTPError`: the request cannot be served as asked; the
  server answers with its status (raised by the body reader on a too large,
  too slow or malformed body, and by handlers).
* :class:`ClientDisconnected`: the client went away (or stopped reading for
  longer than ``write_timeout``). A ``trio.BrokenResourceError``, so code that
  already handles broken trio streams handles it too.
* :class:`UsageError`: the API was used in a way its contract forbids: a bug
  in the calling code, never the client's doing. Nothing was sent when it is
  raised, so the handler can still answer. :class:`HijackError` is the
  subclass for the hijack contract: raised by ``hijack()`` itself, or by any
  call refused because the connection was already hijacked.

Nothing else (h11's exceptions, trio's stream errors, private signals) leaves
the request methods.
"""

from __future__ import annotations

import trio

__all__ = ["ClientDisconnected", "HijackError", "UsageError"]


class UsageError(RuntimeError):
    """The API was misused (wrong order, wrong state, a head that cannot be
    sent). Raised before anything is written."""


class HijackError(UsageError):
    """Misuse of the hijack contract: ``hijack()`` refused (a second hijack,
    after a response was started, after the handler returned, a 101 to a
    request without ``Upgrade``, a head with a body or CR/LF/NUL), or any call
    refused because the connection was hijacked."""


class ClientDisconnected(trio.BrokenResourceError):
    """The client closed or reset the connection, or did not read a write
    within ``Limits.write_timeout``. The exchange is over: let it propagate
    (the server closes the connection quietly) or catch it to clean up."""
