"""The live status pages: one self-contained HTML file per page, and the event streams behind them.

* ``state``: the JSON views of an agent's snapshot that ``/v1/node``, its page and its events
  share, and the delta between two snapshots;
* ``sse``: the server-sent event stream (keepalives, coalescing, slow-client limits), written
  against a small ``LivePage`` protocol so any page can reuse it;
* ``common``: what the pages share (the shared CSS and script inlined into each page, the
  Content-Security-Policy, the favicon, formatters, cached event bodies);
* ``agent_page``: the agent's page (``agent.html``, rendered on the server, kept live by its
  own script through ``/v1/events``);
* ``manager_page``: the fleet manager's page (``manager.html``), over the manager's
  ``FleetSnapshot`` (``reconciler.manager.snapshot``).

The HTML, CSS and script files are package data: they ship in the wheel and are read with
``importlib``.
"""
