"""Fixtures: the real Bigtable and Pub/Sub emulators, started once per session, stopped by PID."""
from __future__ import annotations

import os
import uuid

import pytest

from viewcounts.emulators import bigtable_emulator, pubsub_emulator

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_CASES = os.path.join(os.path.dirname(REPO), "shared", "cases")


@pytest.fixture(scope="session")
def bigtable_host():
    with bigtable_emulator() as emu:
        old = os.environ.get("BIGTABLE_EMULATOR_HOST")
        os.environ["BIGTABLE_EMULATOR_HOST"] = emu.host
        yield emu.host
        if old is None:
            del os.environ["BIGTABLE_EMULATOR_HOST"]
        else:
            os.environ["BIGTABLE_EMULATOR_HOST"] = old


@pytest.fixture(scope="session")
def pubsub_host():
    with pubsub_emulator() as emu:
        old = os.environ.get("PUBSUB_EMULATOR_HOST")
        os.environ["PUBSUB_EMULATOR_HOST"] = emu.host
        yield emu.host
        if old is None:
            del os.environ["PUBSUB_EMULATOR_HOST"]
        else:
            os.environ["PUBSUB_EMULATOR_HOST"] = old


@pytest.fixture
def table(bigtable_host):
    """A fresh table with the aggregates family: ``(project, instance, table)``."""
    from viewcounts.provision import create_table

    name = f"t-{uuid.uuid4().hex[:10]}"
    create_table("test-project", "test-instance", name)
    return "test-project", "test-instance", name
