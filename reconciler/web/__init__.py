"""The live status pages: one self-contained HTML file per page, and the event streams behind them.

* ``state``: the JSON views of a snapshot that ``/v1/node``, the page and its events share, and
  the delta between two snapshots;
* ``sse``: the server-sent event stream (keepalives, coalescing, slow-client limits), written
  against a small ``LivePage`` protocol so any page can reuse it;
* ``agent_page``: the agent's page (``agent.html``, rendered on the server, kept live by its
  own script through ``/v1/events``).

The HTML files are package data: they ship in the wheel and are read with ``importlib``.
"""
