"""What the agent exports and samples: its metrics, task and node usage, the host's figures.

``metrics`` (event counters and the render cache) with ``state_metrics`` (the snapshot as
families), ``usage_metrics`` (a usage sample as families) and ``exposition`` (the text
format); ``usage`` samples the tasks' cgroups and keeps OOM counts and node conditions;
``hoststats`` reads ``/proc`` and the filesystems. A scrape reads what was rendered, never
podman or the store.
"""
