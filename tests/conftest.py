"""Shared pytest options: which propulsion unit the conformance suite talks to."""

import pytest


def pytest_addoption(parser):
    group = parser.getgroup("thruster-hil")
    group.addoption("--unit-url", default=None, metavar="URL",
                    help="port URL of the unit for the conformance suite (a device path, a pty "
                    "path, hwgrep://...); default: start the pty emulator")


@pytest.fixture(scope="session")
def unit_url(request):
    url = request.config.getoption("--unit-url")
    if url:
        yield url
        return
    from firmware_bridge.emulator import EmulatorProcess

    with EmulatorProcess() as emu:
        yield emu.port
