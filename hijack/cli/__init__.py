"""The ``hijack`` command: servers, clients and the supervisor built on the
library. Nothing below this package imports it (``tools/check_layers.py``
holds that), so a library user never pays for the command.

``main()`` is the entry point (``hijack`` on the PATH and ``python -m
hijack``).

The layout, one idea a module:

- ``_main``: the parser, built from ``COMMANDS`` (the registry), and
  ``main()``, which turns every StartupError into one line and exit 2.
- ``_command``: what a command is (``Command``), what its handler builder
  gets (``HandlerContext``: port, hooks, state kept across reloads), and
  ``StartupError``.
- ``_options``: option groups several commands share (``server``,
  ``tunnel``; ``chaining`` and ``team`` come from ``_team``), built once
  per parser; ``_arguments``: the types that check one flag's value.
- ``_service``: ``Service`` (one serving process: listeners, TLS,
  metrics, signals, reloads, readiness) and ``supervise`` (``--workers``),
  with ``_supervisor`` (the worker processes); ``_config_file``
  (``--config``), ``_metrics``, ``_stdio`` (``forward --listen -``).
- One module a command: ``_proxy``, ``_echo``, ``_tcp``, ``_wsbridge``,
  ``_forward``, ``_demo``, ``_hash_password``.

Adding a command (the seam): write ``hijack/cli/_<thing>.py`` with

    COMMAND = Command(
        name="thing", help="...", description="...",
        groups=("server", "tunnel"),          # shared options it takes
        add_arguments=add_arguments,          # its own options
        check=check,                          # options that go together
        handler=build_handler,                # an HTTP server: the Service
    )                                         #   runs it (or run=...)

and add ``_thing.COMMAND`` to ``COMMANDS`` in ``_main``: that one line is
the only edit outside the new module. ``handler(args, context)`` returns
the request handler and is called again on every SIGHUP; keep objects that
must outlive a reload in ``context.kept``, plug metrics through
``context.hooks``. A command that is not an HTTP server (a client, a tool,
a server speaking another protocol) gives ``run(args, line)`` instead and
returns the exit status; it may use ``_service``'s pieces
(``open_listeners``, ``tls_context``). Any problem with the options or
the files they name is ``raise StartupError("--flag VALUE: what is
wrong")``: one line, exit 2 at start-up, one log line on a reload. An
option every server takes (not one command's) goes into the ``server``
group in ``_options`` and is read by ``Service``; options a few commands
share are a new group: a builder in ``_options.GROUPS``, named in those
commands' ``groups``. Runs inside trio end in exception groups: report
them with ``_command.only_one(group, StartupError, ...)``.
"""

from ._main import main as main

__all__ = ["main"]
