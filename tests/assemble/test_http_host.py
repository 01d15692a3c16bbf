"""``--http-host`` from the command line to the server: on ``run`` and on ``manager run`` the
page and ``/v1/*`` answer IP literals, ``localhost`` and the names given, and 421 to any other
``Host``; ``/metrics`` and the probes answer every ``Host``. A real manager under the process
runner, asked by a real client."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

import pytest

from reconciler.assemble.manager import assemble_manager
from reconciler.cli.agent import agent_options
from reconciler.cli.exits import UsageError
from reconciler.cli.manager import run_options
from reconciler.cli.parser import apply_defaults, build_parser
from tests.assemble.test_process import Running, get


def parsed(*argv: str) -> argparse.Namespace:
    args = build_parser().parse_args(list(argv))
    apply_defaults(args, args.spec)
    return args


def manager_args(*argv: str) -> argparse.Namespace:
    return parsed("manager", "run", "--nats", "nats://127.0.0.1:1", *argv)


def test_run_takes_the_names_repeated_and_normalised(tmp_path: Path) -> None:
    base = ("run", "--state-dir", str(tmp_path / "s"), "--desired", str(tmp_path / "d"))
    assert agent_options(parsed(*base)).http_hosts == frozenset()
    opts = agent_options(parsed(*base, "--http-host", "Edge-1.lan.", "--http-host", "edge-1"))
    assert opts.http_hosts == {"edge-1.lan", "edge-1"}


@pytest.mark.parametrize("bad", ["http://edge-1", "edge 1", "edge-1:9469", ""])
def test_a_name_that_is_not_a_dns_name_is_a_usage_error_naming_the_flag(bad: str) -> None:
    with pytest.raises(UsageError, match="--http-host: expected a DNS name"):
        run_options(manager_args("--http-host", bad))


async def test_the_manager_answers_its_page_only_to_ip_localhost_and_the_names_given() -> None:
    opts = run_options(manager_args("--http-host", "fleet.lan"))
    run = Running(assemble_manager(opts, manager_id="m1"), hosts=opts.http_hosts)
    try:
        port = await run.port()
        for host in ("127.0.0.1", f"127.0.0.1:{port}", "localhost", "fleet.lan", "FLEET.lan:1"):
            status, page = await get(port, "/", host=host)
            assert status == 200 and b"<html" in page
        for host in ("evil.example", f"evil.example:{port}", "fleet.lan.evil.example"):
            assert (await get(port, "/", host=host))[0] == 421
            assert (await get(port, "/v1/events", host=host))[0] == 421
            assert (await get(port, "/metrics", host=host))[0] == 200
            assert (await get(port, "/healthz", host=host)) == (200, b"ok")
            assert (await get(port, "/readyz", host=host))[0] == 503  # not connected: it answers
    finally:
        run.stop.set()
        await asyncio.wait_for(run.task, 30)
