"""Container runtimes behind ``reconciler.core.executor``: podman for real hosts, a fake for
tests."""
