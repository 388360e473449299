"""Running the emulator: in the current event loop (Emulator) or in its own thread
(EmulatorThread, for blocking code such as the synchronous SDK)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, Generic, TypeVar

import structlog
from aiohttp import web

from runner.emulator.app import build_app
from runner.emulator.config import EmulatorConfig
from runner.emulator.context import EmulatorState
from runner.emulator.faults import FaultConfig
from runner.emulator.state import TaskInfo
from runner.emulator.stats import EmulatorStats

log = structlog.get_logger("runner.emulator")
T = TypeVar("T")


class Emulator:
    """The emulator on a loopback port of the running loop; use ``async with``."""

    def __init__(self, config: EmulatorConfig | None = None) -> None:
        # A private copy: set_faults and friends must not edit the caller's object.
        self.config = (config or EmulatorConfig()).model_copy(deep=True)
        self._state: EmulatorState | None = None
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def state(self) -> EmulatorState:
        if self._state is None:
            raise RuntimeError("the emulator is not running")
        return self._state

    @property
    def root_url(self) -> str:
        return f"http://{self.config.host}:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.root_url}/api/v1"

    @property
    def compatible_url(self) -> str:
        return f"{self.root_url}/compatible-mode/v1"

    async def start(self) -> None:
        self._state = EmulatorState(self.config)
        self._runner = web.AppRunner(build_app(self._state), access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.config.host, self.config.port)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        self._state.files.root_url = self.root_url
        log.info(
            "emulator started",
            base_url=self.base_url,
            time_scale=self.config.time_scale,
            quotas=self.config.quotas_enabled,
            region=self.config.region,
        )

    async def stop(self) -> None:
        if self._state is not None:
            await self._state.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
            log.info("emulator stopped", base_url=self.base_url)

    async def __aenter__(self) -> Emulator:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    @property
    def stats(self) -> EmulatorStats:
        return self.state.stats.snapshot()

    def reset_stats(self) -> None:
        in_flight = dict(self.state.stats.in_flight)
        self.state.stats.reset()
        self.state.stats.in_flight.update(in_flight)

    def set_faults(self, faults: FaultConfig | float | None = None, **kinds: Any) -> FaultConfig:
        """Replaces the fault config: a FaultConfig, a float (the transient shorthand), or
        its fields as keywords (``set_faults(internal_error=0.1, task_failed={"every_n": 2})``);
        no argument clears all faults."""
        if isinstance(faults, FaultConfig):
            new = faults
        elif faults is not None:
            new = FaultConfig(transient=float(faults), **kinds)
        else:
            new = FaultConfig.model_validate(kinds)
        self.state.set_faults(new)
        log.info("faults set", faults=new.model_dump(exclude_defaults=True, mode="json"))
        return new

    def invalidate_keys(self) -> None:
        """Every key is refused (401 InvalidApiKey) from now on."""
        self.state.keys_revoked = True

    def restore_keys(self) -> None:
        self.state.keys_revoked = False

    def set_quotas_enabled(self, enabled: bool) -> None:
        self.state.config.quotas_enabled = enabled

    def task_info(self, task_id: str) -> TaskInfo | None:
        task = self.state.board.get(task_id)
        return task.info() if task is not None else None

    def billed(self) -> list[dict[str, Any]]:
        """What the account pays for: one entry per accepted async submit ("task") and per
        answered sync call ("sync"): {"kind", "id", "model", "prompt", "n", "t"}."""
        return [dict(entry) for entry in self.state.billed]

    def advance(self, seconds: float) -> None:
        """Moves the emulator's clock forward: tasks finish, age and expire (24 h), result
        URLs expire, quota windows pass, all without waiting."""
        self.state.advance(seconds)


class _Mirrored(Generic[T]):
    """A read-only attribute of ``EmulatorThread`` that is its emulator's attribute of the
    same name."""

    def __set_name__(self, owner: type, name: str) -> None:
        self._name = name

    def __get__(self, thread: EmulatorThread | None, owner: type | None = None) -> T:
        if thread is None:  # looked up on the class: there is no emulator to ask
            raise AttributeError(self._name)
        value: T = getattr(thread.emulator, self._name)
        return value


class EmulatorThread:
    """The same emulator in a daemon thread with its own loop; use ``with``.

    Attribute reads and control calls are marshalled onto the emulator's loop.
    """

    # Plain values, read straight from the wrapped emulator (set before it serves).
    config = _Mirrored[EmulatorConfig]()
    port = _Mirrored[int]()
    root_url = _Mirrored[str]()
    base_url = _Mirrored[str]()
    compatible_url = _Mirrored[str]()

    def __init__(self, config: EmulatorConfig | None = None) -> None:
        self.emulator = Emulator(config)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None

    def __enter__(self) -> EmulatorThread:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="dashscope-emulator", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            raise RuntimeError("the emulator failed to start") from self._error

    def _run(self) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            try:
                await self.emulator.start()
            except BaseException as exc:
                self._error = exc
                self._ready.set()
                return
            self._ready.set()
            try:
                await self._stop.wait()
            finally:
                await self.emulator.stop()

        asyncio.run(main())

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(timeout=10)
        self._thread = None

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._loop is None:
            coro.close()
            raise RuntimeError("the emulator thread is not running")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=10)

    def _sync(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        async def call() -> Any:
            return fn(*args, **kwargs)

        return self._call(call())

    @property
    def stats(self) -> EmulatorStats:
        result: EmulatorStats = self._sync(lambda: self.emulator.stats)
        return result

    def reset_stats(self) -> None:
        self._sync(self.emulator.reset_stats)

    def set_faults(self, faults: FaultConfig | float | None = None, **kinds: Any) -> FaultConfig:
        result: FaultConfig = self._sync(self.emulator.set_faults, faults, **kinds)
        return result

    def invalidate_keys(self) -> None:
        self._sync(self.emulator.invalidate_keys)

    def restore_keys(self) -> None:
        self._sync(self.emulator.restore_keys)

    def set_quotas_enabled(self, enabled: bool) -> None:
        self._sync(self.emulator.set_quotas_enabled, enabled)

    def task_info(self, task_id: str) -> TaskInfo | None:
        result: TaskInfo | None = self._sync(self.emulator.task_info, task_id)
        return result

    def billed(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._sync(self.emulator.billed)
        return result

    def advance(self, seconds: float) -> None:
        self._sync(self.emulator.advance, seconds)
