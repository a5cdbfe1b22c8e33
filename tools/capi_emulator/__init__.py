"""A local emulator of Meta's Conversions API (`POST /{version}/{pixel_id}/events`).

In-process use (tests of other modules)::

    from capi_emulator import EmulatorConfig, start_in_thread

    with start_in_thread(EmulatorConfig()) as emu:
        post_to(emu.base_url + "/v26.0/1234567890/events", ...)

`create_app(config)` gives the bare aiohttp application; `capi-emulator` serves it from the shell.
"""

from capi_emulator.app import EMULATOR_KEY, Emulator, create_app, posted_events
from capi_emulator.config import EmulatorConfig, FaultSpec, TokenConfig, load_config
from capi_emulator.server import RunningEmulator, start_in_thread

__all__ = [
    "EMULATOR_KEY",
    "Emulator",
    "EmulatorConfig",
    "FaultSpec",
    "RunningEmulator",
    "TokenConfig",
    "create_app",
    "load_config",
    "posted_events",
    "start_in_thread",
]
