"""Fixtures: the real Bigtable and Pub/Sub emulators, started once per session, stopped by PID."""

from __future__ import annotations

import os
import uuid

import pytest

from viewcounts.local.emulators import bigtable_emulator, pubsub_emulator

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_CASES = os.path.join(os.path.dirname(REPO), "shared", "cases")


def _serve(emulator):
    """Start an emulator, point its client variable at it for the session, stop it by PID."""
    with emulator as emu:
        old = os.environ.get(emu.env_var)
        os.environ[emu.env_var] = emu.host
        yield emu.host
        if old is None:
            del os.environ[emu.env_var]
        else:
            os.environ[emu.env_var] = old


@pytest.fixture(scope="session")
def bigtable_host():
    yield from _serve(bigtable_emulator())


@pytest.fixture(scope="session")
def pubsub_host():
    yield from _serve(pubsub_emulator())


@pytest.fixture
def table(bigtable_host):
    """A fresh table with the aggregates family: ``(project, instance, table)``."""
    from viewcounts.local.provision import create_table

    name = f"t-{uuid.uuid4().hex[:10]}"
    create_table("test-project", "test-instance", name)
    return "test-project", "test-instance", name
