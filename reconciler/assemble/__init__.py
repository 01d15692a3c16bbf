"""The composition layer: where the agent and the manager are put together, and how they run.

Everything else under ``reconciler`` receives its collaborators as arguments, which is what
keeps it testable with fakes. Here the real ones are chosen, once, for every caller: the command
line, the test harnesses and the benchmarks all assemble through this package.

* ``agent.assemble_agent(options, ...)``: one node's agent over an open store, with the podman
  runtime and the session its options name (the desired directory, or the fleet over NATS); a
  caller may hand in its own runtime, session and clock (the fake runtime, an in-memory session,
  the fake clock) and gets the same agent.
* ``manager.assemble_manager(options, ...)``: a fleet manager with its metrics and status page.
* ``process.run_process(program, listen)``: the one process runner for both. It owns SIGTERM and
  SIGINT, serves the program's routes with ``/healthz`` and ``/readyz`` taken from its
  supervisor and its readiness, supervises the HTTP server as the loop ``http`` (a failed server
  binds again), and stops everything in order.

The agent and the manager are separate modules so that an agent never imports the manager's
code, nor a manager podman's. This package, and nothing else under ``reconciler/``, imports
``runtime`` (import-linter's contracts say so).
"""
