"""The REST multipart upload the JS client uses above 90 MiB: `POST /storage/upload/initiate-multipart`
→ `{upload_url, file_url}`, `PUT {upload_url}/{n}` → `{partNumber, etag}`, `POST {upload_url}/complete`.
The part URLs carry a signature instead of a key, like fal's pre-signed storage URLs."""

from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from klingflow.simulator.guard import guarded
from klingflow.simulator.routes_queue import base_url
from klingflow.simulator.state import SimState
from klingflow.simulator.storage import StorageError

UPLOAD_PATH = "/files/{slot}/{name}/upload/{upload_id}"


def multipart_routes(state: SimState) -> list[Route]:
    """Initiate, part and complete routes of the signed multipart upload."""
    storage, signer = state.storage, state.signer

    def signed(request: Request) -> bool:
        p = request.path_params
        return signer.verify(f"{p['slot']}/{p['name']}/{p['upload_id']}", request.query_params.get("signature", ""))

    async def initiate(request: Request) -> Response:
        try:
            body = await request.json()
        except ValueError:
            body = {}
        body = body if isinstance(body, dict) else {}
        content_type = body.get("content_type") or "application/octet-stream"
        slot, name = storage.new_slot(body.get("file_name"), content_type)
        upload_id = storage.create_multipart(slot, name)
        file_url = storage.url(base_url(request), slot, name)
        signature = signer.sign(f"{slot}/{name}/{upload_id}")
        return JSONResponse(
            {"upload_url": f"{file_url}/upload/{upload_id}?signature={signature}", "file_url": file_url}
        )

    async def part(request: Request) -> Response:
        if not signed(request):
            return JSONResponse({"detail": "Invalid signature"}, 403)
        p = request.path_params
        try:
            md5 = await storage.stage_part(p["slot"], p["name"], p["upload_id"], p["part"], request.stream())
        except StorageError as exc:
            return JSONResponse({"detail": str(exc)}, 404)
        return JSONResponse({"partNumber": p["part"], "etag": md5}, headers={"ETag": f'"{md5}"'})

    async def complete(request: Request) -> Response:
        if not signed(request):
            return JSONResponse({"detail": "Invalid signature"}, 403)
        p = request.path_params
        try:
            parts = {int(x["partNumber"]): str(x["etag"]) for x in (await request.json())["parts"]}
            size = await asyncio.to_thread(storage.complete_multipart, p["slot"], p["name"], p["upload_id"], parts)
        except (StorageError, KeyError, TypeError, ValueError) as exc:
            return JSONResponse({"detail": f"Cannot complete upload: {exc}"}, 400)
        state.counters.add("uploads")
        state.counters.add("upload_bytes", size)
        return JSONResponse({"file_url": storage.url(base_url(request), p["slot"], p["name"])})

    return [
        Route("/storage/upload/initiate-multipart", guarded(state, "upload", "key", initiate), methods=["POST"]),
        Route(UPLOAD_PATH + "/complete", guarded(state, "upload", "none", complete), methods=["POST"]),
        Route(UPLOAD_PATH + "/{part:int}", guarded(state, "upload", "none", part), methods=["PUT"]),
    ]
