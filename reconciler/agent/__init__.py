"""One node's agent: its parts, each with one job, put together by ``agent.Agent``.

``observer`` (what the agent knows, the snapshot, the runtime's reports), ``startup`` (the
host-reboot check, adoption), ``pump`` (desired state in, statuses out), ``resync`` (relist,
orphans, image GC, the usage sampler beside it), ``imagegc`` and ``storewatch`` (not ready while
store writes fail). The core's worker and task managers do the work; these parts feed them and
report what they do. docs/architecture.md has the map.
"""
