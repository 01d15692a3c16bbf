"""HTTP: a small bounded server, the agent's routes and status page, and live event streams.

* ``server``: the HTTP/1.1 server over a route table (bounded, GET and HEAD only), and the
  ``/healthz`` and ``/readyz`` probe routes;
* ``agent_routes``: the agent's ``/metrics``, ``/v1/tasks`` and ``/v1/node``, from its snapshot;
* ``state``: the JSON views of an agent's snapshot that ``/v1/node``, its page and its events
  share, and the delta between two snapshots;
* ``sse``: the server-sent event stream (keepalives, coalescing, slow-client limits), written
  against a small ``Page`` protocol so any page can reuse it;
* ``common``: what the pages share (the shared CSS and script inlined into each page, the
  Content-Security-Policy, the favicon, formatters, cached event bodies);
* ``agent_page``: the agent's page (``agent.html``, rendered on the server, kept live by its
  own script through ``/v1/events``). The fleet manager's page builds on the same parts
  (``reconciler.manager.page``).

The HTML, CSS and script files are package data: they ship in the wheel and are read with
``importlib``.
"""
