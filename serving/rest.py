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
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import numpy as np
from google.protobuf import json_format
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send
from tensorflow_serving.apis import get_model_metadata_pb2

import modelrepo

from . import v2
from .asgi import JSON_TYPE, Reply, header, json_reply, read_body, send_reply
from .dataplane import SERVER_NAME, SHUTTING_DOWN, DataPlane
from .errors import OK, InvalidInput, ModelNotFound, ModelUnavailable, classify
from .jsonbody import numeric_array, parse_json
from .metrics import ServingMetrics
from .tfs_servicer import OUTPUTS as TFS_OUTPUTS
from .tfs_servicer import SIGNATURE_DEF_FIELD, resolve_model
from .validation import check_range, check_shape
from .wire import parse_version, shown

log = logging.getLogger(__name__)

STATIC = Path(__file__).resolve().parent / "static"
OK_CODE = OK.name  # the metrics' code label of a success (a property: looked up once)
CANCELLED_CODE = "CANCELLED"  # the client went away: the gRPC servicers record the same
# TF Serving REST: /v1/models/<name>[/versions/<n>][:predict]
TFS_PATH = re.compile(r"^(?P<name>[^/:]+)(?:/versions/(?P<version>[^/:]+))?(?::(?P<verb>[A-Za-z]+))?$")
# A handler gets the ASGI scope (path parameters in scope["path_params"]) and the request body; it
# returns a Reply or a JSON-serialisable object (sent as 200).
Handler = Callable[[Scope, bytes], Awaitable[object]]


def json_response(body: object, status: int = 200) -> Response:
    """:func:`json_reply`'s JSON as a Starlette response (for Starlette's own 404/405 handler)."""
    return Response(json_reply(body).body, status, media_type=JSON_TYPE)


class Endpoint:
    """One route's ASGI endpoint: reads the body, runs the handler, applies the status table, records
    the metrics, sends the answer (the cross-cutting part, in one place for every route).

    A class instance rather than a function, so Starlette's ``Route`` passes it requests as they are.
    """

    def __init__(
        self,
        method: str,
        handler: Handler,
        metrics: ServingMetrics,
        max_body_bytes: int | None,
        plane: DataPlane | None,
    ) -> None:
        self.method = method  # the metrics' method label
        self.handler = handler
        self.metrics = metrics
        self.inflight = metrics.inflight_by_protocol["http"]
        self.max_body_bytes = max_body_bytes  # None: a route without a body
        self.plane = plane  # None: answers during shutdown too (health, readiness, the page)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        plane = self.plane
        admitted = plane is not None and plane.admit()
        self.inflight.inc()
        code = OK_CODE
        reply: Reply | None = None
        try:
            if plane is not None and not admitted:
                raise ModelUnavailable(SHUTTING_DOWN)
            limit = self.max_body_bytes
            body = b"" if limit is None else await read_body(scope, receive, limit)
            result = await self.handler(scope, body)
            reply = result if isinstance(result, Reply) else json_reply(result)
        except ClientDisconnect:  # gone mid-body (or sent a broken chunked body): nobody to answer
            code = CANCELLED_CODE
            log.info("%s (HTTP): the client went away before its request was read", self.method)
        except Exception as exc:
            status, message = classify(exc)
            if status.http_status == 500:
                log.exception("%s (HTTP %s) failed", self.method, shown(scope["path"]))
            code = status.name
            reply = json_reply({"error": message}, status.http_status)
        finally:
            self.inflight.dec()
        self.metrics.observe_request("http", self.method, code, time.perf_counter() - started)
        try:
            if reply is not None:
                # While shutting down, ask keep-alive clients to reconnect (to another replica).
                await send_reply(send, reply, close=plane is not None and plane.stopping)
        finally:
            if admitted:
                plane.release()


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

    # ---- TensorFlow Serving REST ----
    def _tfs_target(self, scope: Scope) -> tuple[str, int | None]:
        """POST /v1/models/<name>[/versions/<n>]:predict -> (name, version)."""
        match = TFS_PATH.match(scope["path_params"]["target"])
        if match is None or match["verb"] is None:
            raise ModelNotFound(f"no TF Serving REST resource at POST {shown(scope['path'])}")
        if match["verb"] != "predict":
            raise InvalidInput(f"only :predict is served (got :{shown(match['verb'])})")
        version = match["version"]
        return match["name"], None if version is None else parse_version(version, "the version in the path")

    def _tfs_path_model(self, scope: Scope) -> tuple[str, int | None]:
        version = scope["path_params"].get("version")
        name = scope["path_params"]["name"]
        return name, None if version is None else parse_version(version, "the version in the path")

    async def tfs_status(self, scope: Scope, body: bytes) -> object:
        name, version = self._tfs_path_model(scope)
        loaded = [self.plane.model(name, version)] if version else self.plane.versions(name)
        if not loaded:
            loaded = [self.plane.model(name)]  # raises the right error (unavailable or not found)
        return {
            "model_version_status": [
                {
                    "version": str(model.version),
                    "state": "AVAILABLE",
                    "status": {"error_code": "OK", "error_message": ""},
                }
                for model in loaded
            ]
        }

    async def tfs_metadata(self, scope: Scope, body: bytes) -> object:
        name, version = self._tfs_path_model(scope)
        model = resolve_model(self.plane, name, version, "")
        signatures = get_model_metadata_pb2.SignatureDefMap()
        signatures.signature_def[modelrepo.SIGNATURE_NAME].CopyFrom(model.signature_def)
        return {
            "model_spec": {"name": model.name, "signature_name": "", "version": str(model.version)},
            "metadata": {
                SIGNATURE_DEF_FIELD: json_format.MessageToDict(signatures, preserving_proto_field_name=True)
            },
        }

    async def tfs_predict(self, scope: Scope, body: bytes) -> object:
        name, version = self._tfs_target(scope)
        payload = parse_json(body, self.plane.max_images)
        signature = payload.get("signature_name", "")
        if not isinstance(signature, str):
            raise InvalidInput("'signature_name' must be a string")
        model = resolve_model(self.plane, name, version, signature)
        if ("instances" in payload) == ("inputs" in payload):
            raise InvalidInput("send exactly one of 'instances' (row format) or 'inputs' (columnar format)")
        row = "instances" in payload
        data = payload["instances"] if row else payload["inputs"]
        if row:
            if not isinstance(data, list):
                raise InvalidInput("'instances' must be a list")
            if data and all(isinstance(item, dict) for item in data):
                if any(set(item) != {modelrepo.INPUT_KEY} for item in data):
                    raise InvalidInput(
                        f"each instance object must have exactly one key, {modelrepo.INPUT_KEY!r}"
                    )
                data = [item[modelrepo.INPUT_KEY] for item in data]
        elif isinstance(data, dict):
            if set(data) != {modelrepo.INPUT_KEY}:
                raise InvalidInput(
                    f"'inputs' names {shown(sorted(data))}; expected [{modelrepo.INPUT_KEY!r}]"
                )
            data = data[modelrepo.INPUT_KEY]
        field = "instances" if row else "inputs"
        array = numeric_array(data, field)
        check_shape(list(array.shape), self.plane.max_images, field)
        images = check_range(array.astype(np.float32, copy=False), field)
        probabilities, classes = await self.plane.predict(model, images)
        arrays = v2.output_arrays(probabilities, classes)  # keyed by output name, as TF Serving's
        if row:
            return {"predictions": [{key: arrays[key][i] for key in TFS_OUTPUTS} for i in range(len(images))]}
        return {"outputs": {key: arrays[key] for key in TFS_OUTPUTS}}

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
