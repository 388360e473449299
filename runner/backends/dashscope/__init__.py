"""The DashScope HTTP client: async submit, poll and download, sync calls, typed errors.

- :mod:`.config`: :class:`ClientConfig`, the constants, the User-Agent
- :mod:`.types`: what the client returns, and the reading of the service's answers
- :mod:`.transport`: the swappable :class:`Transport` (default :class:`AiohttpTransport`)
- :mod:`.requester`: one HTTP call and its own retries (GETs only);
  :mod:`.failures`: answers into typed errors
- :mod:`.client`: :class:`DashScopeClient`, built on the two above
"""

from runner.backends.dashscope.client import DashScopeClient
from runner.backends.dashscope.config import USER_AGENT, ClientConfig
from runner.backends.dashscope.transport import AiohttpTransport, Request, Response, Transport
from runner.backends.dashscope.types import (
    DownloadTooLarge,
    EventHook,
    Submitted,
    SyncResult,
    TaskState,
    TaskStatus,
    service_time,
)

__all__ = [
    "USER_AGENT",
    "AiohttpTransport",
    "ClientConfig",
    "DashScopeClient",
    "DownloadTooLarge",
    "EventHook",
    "Request",
    "Response",
    "Submitted",
    "SyncResult",
    "TaskState",
    "TaskStatus",
    "Transport",
    "service_time",
]
