"""HTTP/JSON routes: Open Inference Protocol v2 REST, TensorFlow Serving REST, and the drawing page.

A thin layer like the gRPC servicers: JSON <-> arrays here, everything else in the data plane. Every
route's endpoint is an :class:`Endpoint`, a plain ASGI callable that reads the body within
``max_body_bytes``, applies the one status table (``serving/errors.py``) and records the same metrics as
gRPC with ``protocol="http"``. Starlette routes the requests (404, 405, CORS, static files), except a
v2 infer POST, which :class:`HttpApp` hands to its endpoint directly: on the hot path (a single-image
infer) Starlette's request and response objects, middleware and router were a measurable share of the
CPU time. Errors are ``{"error": "<message>"}`` on both APIs (the v2 REST spec and TF Serving REST
agree on that shape).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from . import tfs, v2
from .asgi import JSON_TYPE, Reply, header, json_reply
from .dataplane import SERVER_NAME, DataPlane
from .endpoint import Endpoint, Handler
from .jsonbody import parse_json
from .metrics import ServingMetrics
from .wire import parse_version, shown

log = logging.getLogger(__name__)

STATIC = Path(__file__).resolve().parent / "static"


def json_response(body: object, status: int = 200) -> Response:
    """:func:`json_reply`'s JSON as a Starlette response (for Starlette's own 404/405 handler)."""
    return Response(json_reply(body).body, status, media_type=JSON_TYPE)


class RestApi:
    """The routes' handlers over one data plane; build the app with :func:`create_app`."""

    def __init__(self, plane: DataPlane, metrics: ServingMetrics, max_body_bytes: int) -> None:
        self.plane = plane
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        # Model names are folder names (letters, digits, '_', '.', '-'): safe inside HTML as they are.
        page = (STATIC / "index.html").read_text().replace("{{DEFAULT_MODEL}}", plane.default_model)
        self._page = page.encode()

    def _endpoint(self, method: str, handler: Handler, *, body: bool = False, gated: bool = True) -> Endpoint:
        """``gated``: refused (503) once shutdown begins; health and readiness are not."""
        limit = self.max_body_bytes if body else None
        return Endpoint(method, handler, self.metrics, limit, self.plane if gated else None)

    # ---- Open Inference Protocol v2 ----
    async def server_live(self, scope: Scope, body: bytes) -> object:
        return json_reply({"live": self.plane.live()}, 200 if self.plane.live() else 503)

    async def server_ready(self, scope: Scope, body: bytes) -> object:
        ready = self.plane.ready()
        return json_reply({"ready": ready}, 200 if ready else 503)

    async def server_metadata(self, scope: Scope, body: bytes) -> object:
        return {"name": SERVER_NAME, "version": v2.server_version(), "extensions": v2.EXTENSIONS}

    def _v2_model(self, scope: Scope):
        params = scope["path_params"]
        return self.plane.model(params["name"], parse_version(params.get("version", ""), "version"))

    async def model_metadata(self, scope: Scope, body: bytes) -> object:
        model = self._v2_model(scope)
        return v2.model_metadata(model, self.plane.versions(model.name))

    async def model_ready(self, scope: Scope, body: bytes) -> object:
        name = scope["path_params"]["name"]
        version = parse_version(scope["path_params"].get("version", ""), "version")
        ready = self.plane.model_ready(name, version)
        return json_reply({"name": name, "ready": ready}, 200 if ready else 503)

    async def infer(self, scope: Scope, body: bytes) -> object:
        model = self._v2_model(scope)
        text, binary = v2.split_binary_body(body, header(scope, v2.BINARY_HEADER))
        request = v2.rest_infer_request(
            parse_json(text, self.plane.max_images), binary, self.plane.max_images
        )
        probabilities, classes = await self.plane.predict(model, request.images)
        response, blobs = v2.rest_infer_response(model, request, probabilities, classes)
        if not blobs:
            return json_reply(response)
        head = json_reply(response).body
        return Reply(
            b"".join([head, *blobs]),
            content_type=b"application/octet-stream",
            headers=((v2.BINARY_HEADER, b"%d" % len(head)),),
        )

    # ---- TensorFlow Serving REST (codec: serving/tfs.py) ----
    def _tfs_path_model(self, scope: Scope) -> tuple[str, int | None]:
        params = scope["path_params"]
        return params["name"], tfs.rest_path_version(params.get("version"))

    async def tfs_status(self, scope: Scope, body: bytes) -> object:
        name, version = self._tfs_path_model(scope)
        loaded = [self.plane.model(name, version)] if version else self.plane.versions(name)
        if not loaded:
            loaded = [self.plane.model(name)]  # raises the right error (unavailable or not found)
        return tfs.rest_status(loaded)

    async def tfs_metadata(self, scope: Scope, body: bytes) -> object:
        name, version = self._tfs_path_model(scope)
        return tfs.rest_metadata(tfs.resolve_model(self.plane, name, version, ""))

    async def tfs_predict(self, scope: Scope, body: bytes) -> object:
        name, version = tfs.rest_target(scope["path_params"]["target"], scope["path"])
        payload = parse_json(body, self.plane.max_images)
        model = tfs.resolve_model(self.plane, name, version, tfs.rest_signature(payload))
        images, row = tfs.rest_predict_images(payload, self.plane.max_images)
        probabilities, classes = await self.plane.predict(model, images)
        return tfs.rest_predict_response(probabilities, classes, row)

    # ---- the drawing page ----
    async def page(self, scope: Scope, body: bytes) -> object:
        return Reply(self._page, content_type=b"text/html; charset=utf-8")


async def _http_error(request: Request, exc: HTTPException) -> Response:
    """Unknown paths and methods answer JSON too (never Starlette's plain-text pages)."""
    path = shown(request.url.path)  # the path is the client's: echo a bounded excerpt
    return json_response({"error": f"{exc.detail}: {request.method} {path}"}, exc.status_code)


class HttpApp:
    """The ASGI app: a v2 infer POST goes straight to its endpoint, every other request through Starlette.

    Starlette's middleware and router add about a tenth to a single-image infer's own CPU time (measured
    in process, docs/serving.md); its routes still list the infer paths, so other methods on them get
    Starlette's 405 and CORS preflights its answer.
    """

    # Starlette's "/v2/models/{name}/infer" and "/v2/models/{name}/versions/{version}/infer" in one.
    INFER_PATH = re.compile(r"^/v2/models/(?P<name>[^/]+)(?:/versions/(?P<version>[^/]+))?/infer$")

    def __init__(self, routes: Starlette, infer: ASGIApp) -> None:
        self.routes = routes
        self._infer = infer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            match = self.INFER_PATH.match(scope["path"])
            if match is not None:
                name, version = match.groups()
                scope["path_params"] = (
                    {"name": name} if version is None else {"name": name, "version": version}
                )
                await self._infer(scope, receive, send)
                return
        await self.routes(scope, receive, send)


def create_app(
    plane: DataPlane, metrics: ServingMetrics, *, max_body_bytes: int, cors_origins: list[str] | None = None
) -> HttpApp:
    api = RestApi(plane, metrics, max_body_bytes)
    e = api._endpoint
    infer = e("v2.ModelInfer", api.infer, body=True)
    routes = [
        Route("/v2/models/{name}/infer", infer, methods=["POST"]),
        Route("/", e("page", api.page, gated=False), methods=["GET"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
        Route("/v2/health/live", e("v2.ServerLive", api.server_live, gated=False), methods=["GET"]),
        Route("/v2/health/ready", e("v2.ServerReady", api.server_ready, gated=False), methods=["GET"]),
        Route("/v2", e("v2.ServerMetadata", api.server_metadata), methods=["GET"]),
        Route("/v2/models/{name}", e("v2.ModelMetadata", api.model_metadata), methods=["GET"]),
        Route(
            "/v2/models/{name}/versions/{version}", e("v2.ModelMetadata", api.model_metadata), methods=["GET"]
        ),
        Route("/v2/models/{name}/ready", e("v2.ModelReady", api.model_ready, gated=False), methods=["GET"]),
        Route(
            "/v2/models/{name}/versions/{version}/ready",
            e("v2.ModelReady", api.model_ready, gated=False),
            methods=["GET"],
        ),
        Route("/v2/models/{name}/versions/{version}/infer", infer, methods=["POST"]),
        Route("/v1/models/{name}", e("tfs.GetModelStatus", api.tfs_status), methods=["GET"]),
        Route(
            "/v1/models/{name}/versions/{version}", e("tfs.GetModelStatus", api.tfs_status), methods=["GET"]
        ),
        Route("/v1/models/{name}/metadata", e("tfs.GetModelMetadata", api.tfs_metadata), methods=["GET"]),
        Route(
            "/v1/models/{name}/versions/{version}/metadata",
            e("tfs.GetModelMetadata", api.tfs_metadata),
            methods=["GET"],
        ),
        Route("/v1/models/{target:path}", e("tfs.Predict", api.tfs_predict, body=True), methods=["POST"]),
    ]
    middleware = []
    direct_infer: ASGIApp = infer
    if cors_origins:  # off unless origins are configured
        cors = {
            "allow_origins": cors_origins,
            "allow_methods": ["GET", "POST"],
            "allow_headers": ["Content-Type"],
        }
        middleware.append(Middleware(CORSMiddleware, **cors))
        direct_infer = CORSMiddleware(infer, **cors)
    app = Starlette(routes=routes, middleware=middleware, exception_handlers={HTTPException: _http_error})
    return HttpApp(app, direct_infer)
