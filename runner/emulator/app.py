"""The aiohttp application: route table and the middleware that renders errors.

Routes (base path /api/v1 as on the real service):
  POST /api/v1/services/aigc/{text2image|image2image}/image-synthesis   async submit
  GET  /api/v1/tasks/{task_id}                                          poll
  POST /api/v1/tasks/{task_id}/cancel                                   cancel (PENDING only)
  POST /api/v1/services/aigc/multimodal-generation/generation           sync generation
  POST /api/v1/services/aigc/image-generation/generation                async (wan2.6, wan2.7)
  GET  /api/v1/uploads?action=getPolicy&model=M   +   POST /_oss/upload temporary uploads
  GET  /files/{name}.png?Expires=..&OSSAccessKeyId=..&Signature=..      result images
  POST /compatible-mode/v1/chat/completions                             Qwen-VL judge
  /_emulator/...                                                        control, see routes_admin
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from runner.emulator import routes_admin as admin
from runner.emulator.context import (
    STATE_KEY,
    ConnectionReset,
    CutAnswer,
    EmulatorState,
    cut_answer,
    reset_connection,
)
from runner.emulator.protocol import ApiError, dashscope_error, new_request_id, openai_error
from runner.emulator.routes_files import download, oss_upload, upload_policy
from runner.emulator.routes_generation import generation, generation_task
from runner.emulator.routes_judge import chat_completions
from runner.emulator.routes_tasks import cancel, list_tasks, poll, submit

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# base64 images of up to 10 MB raw travel inside JSON bodies.
CLIENT_MAX_SIZE = 64 * 1024 * 1024


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    state = request.app[STATE_KEY]
    if not request.path.startswith("/_emulator"):
        state.stats.requests += 1
    rid = new_request_id()
    try:
        return await handler(request)
    except ApiError as err:
        state.stats.error(err.status, err.code)
        if request.path.startswith("/compatible-mode/"):
            return openai_error(err, rid)
        return dashscope_error(err, rid)
    except ConnectionReset:
        return reset_connection(request)
    except CutAnswer:
        return await cut_answer(request)


def build_app(state: EmulatorState) -> web.Application:
    app = web.Application(middlewares=[error_middleware], client_max_size=CLIENT_MAX_SIZE)
    app[STATE_KEY] = state
    api: list[tuple[str, str, Handler]] = [
        ("POST", "/api/v1/services/aigc/{task:text2image|image2image}/image-synthesis", submit),
        ("GET", "/api/v1/tasks", list_tasks),
        ("GET", "/api/v1/tasks/{task_id}", poll),
        ("POST", "/api/v1/tasks/{task_id}/cancel", cancel),
        ("POST", "/api/v1/services/aigc/multimodal-generation/generation", generation),
        ("POST", "/api/v1/services/aigc/image-generation/generation", generation_task),
        ("GET", "/api/v1/uploads", upload_policy),
        ("POST", "/compatible-mode/v1/chat/completions", chat_completions),
    ]
    for method, path, handler in api:
        app.router.add_route(method, path, handler)
        # The SDK's aio task calls append a slash (".../tasks/{id}/"); the service takes both.
        app.router.add_route(method, path + "/", handler)
    app.router.add_post("/_oss/upload", oss_upload)
    app.router.add_get("/files/{name}", download)
    app.router.add_get("/_emulator/stats", admin.stats)
    app.router.add_post("/_emulator/stats/reset", admin.reset_stats)
    app.router.add_get("/_emulator/faults", admin.get_faults)
    app.router.add_post("/_emulator/faults", admin.set_faults)
    app.router.add_post("/_emulator/keys/invalidate", admin.invalidate_keys)
    app.router.add_post("/_emulator/keys/restore", admin.restore_keys)
    app.router.add_post("/_emulator/quotas", admin.quotas)
    app.router.add_get("/_emulator/tasks/{task_id}", admin.task_info)
    app.router.add_get("/_emulator/billed", admin.billed)
    app.router.add_post("/_emulator/advance", admin.advance)
    return app
