"""Container runtimes behind ``reconciler.executor``: podman for real hosts, a fake for tests."""
