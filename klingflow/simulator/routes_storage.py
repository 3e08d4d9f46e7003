"""Storage routes: CDN token, v3 single-part and multipart uploads, the "fal" (GCS-style signed URL)
fallback, and public file downloads streamed from disk (optionally throttled)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from klingflow.simulator.guard import guarded
from klingflow.simulator.responses import not_found
from klingflow.simulator.routes_queue import base_url
from klingflow.simulator.state import SimState
from klingflow.simulator.storage import StorageError

THROTTLE_CHUNK = 16 * 1024


def storage_routes(state: SimState) -> list[Route]:
    """Token, upload and download routes."""
    storage, counters, signer = state.storage, state.counters, state.signer

    def file_url(request: Request, slot: str, name: str) -> str:
        return storage.url(base_url(request), slot, name)

    def counted_upload(size: int) -> None:
        counters.add("uploads")
        counters.add("upload_bytes", size)

    async def token(request: Request) -> Response:
        value, expires = signer.issue_token(request.state.key_id)
        return JSONResponse(
            {"token": value, "token_type": "Bearer", "base_url": base_url(request), "expires_at": expires.isoformat()}
        )

    async def upload_single(request: Request) -> Response:
        slot, name = storage.new_slot(request.headers.get("x-fal-file-name"), _content_type(request))
        size, _ = await storage.write_stream(storage.path(slot, name), request.stream())
        counted_upload(size)
        return JSONResponse({"access_url": file_url(request, slot, name)})

    async def multipart_create(request: Request) -> Response:
        slot, name = storage.new_slot(request.headers.get("x-fal-file-name"), _content_type(request))
        upload_id = storage.create_multipart(slot, name)
        return JSONResponse({"access_url": file_url(request, slot, name), "uploadId": upload_id})

    async def multipart_part(request: Request) -> Response:
        p = request.path_params
        try:
            md5 = await storage.stage_part(p["slot"], p["name"], p["upload_id"], p["part"], request.stream())
        except StorageError as exc:
            return JSONResponse({"detail": str(exc)}, 404)
        return Response(status_code=200, headers={"ETag": f'"{md5}"'})

    async def multipart_complete(request: Request) -> Response:
        p = request.path_params
        try:
            parts = {int(x["partNumber"]): str(x["etag"]) for x in (await request.json())["parts"]}
            size = await asyncio.to_thread(storage.complete_multipart, p["slot"], p["name"], p["upload_id"], parts)
        except (StorageError, KeyError, TypeError, ValueError) as exc:
            return JSONResponse({"detail": f"Cannot complete upload: {exc}"}, 400)
        counted_upload(size)
        return JSONResponse({"access_url": file_url(request, p["slot"], p["name"])})

    async def initiate(request: Request) -> Response:
        try:
            body = await request.json()
        except ValueError:
            body = {}
        slot, name = storage.new_slot(body.get("file_name"), body.get("content_type") or "application/octet-stream")
        signature = signer.sign(f"{slot}/{name}")
        url = file_url(request, slot, name)
        return JSONResponse({"upload_url": f"{url}?signature={signature}", "file_url": url})

    async def signed_put(request: Request) -> Response:
        slot, name = request.path_params["slot"], request.path_params["name"]
        if not signer.verify(f"{slot}/{name}", request.query_params.get("signature", "")):
            return JSONResponse({"detail": "Invalid signature"}, 403)
        try:
            size, _ = await storage.write_stream(storage.path(slot, name), request.stream())
        except StorageError:
            return not_found("File")
        counted_upload(size)
        return Response(status_code=200)

    async def download(request: Request) -> Response:
        slot, name = request.path_params["slot"], request.path_params["name"]
        try:
            path = storage.path(slot, name)
        except StorageError:
            return not_found("File")
        if not path.is_file():
            return not_found("File")
        media_type = storage.content_type(slot, name)
        if request.method == "GET":
            counters.add("downloads")
            counters.add("download_bytes", path.stat().st_size)
            throttle = state.faults.download_throttle()
            if throttle:
                return _throttled(path, media_type, throttle)
        return FileResponse(path, media_type=media_type)

    file_path = "/files/{slot}/{name}"
    part_path = file_path + "/multipart/{upload_id}"
    return [
        Route("/storage/auth/token", guarded(state, "token", "key", token), methods=["POST"]),
        Route("/storage/upload/initiate", guarded(state, "upload", "key", initiate), methods=["POST"]),
        Route("/files/upload", guarded(state, "upload", "cdn", upload_single), methods=["POST"]),
        Route("/files/upload/multipart", guarded(state, "upload", "cdn", multipart_create), methods=["POST"]),
        Route(part_path + "/complete", guarded(state, "upload", "cdn", multipart_complete), methods=["POST"]),
        Route(part_path + "/{part:int}", guarded(state, "upload", "cdn", multipart_part), methods=["PUT"]),
        Route(file_path, guarded(state, "upload", "none", signed_put), methods=["PUT"]),
        Route(file_path, guarded(state, "download", "none", download), methods=["GET", "HEAD"]),
    ]


def _content_type(request: Request) -> str:
    return request.headers.get("content-type") or "application/octet-stream"


def _throttled(path: Path, media_type: str, bytes_per_s: int) -> Response:
    """Stream a file at about `bytes_per_s` (the slow-download fault)."""

    async def body() -> AsyncIterator[bytes]:
        with path.open("rb") as f:
            while chunk := f.read(THROTTLE_CHUNK):
                yield chunk
                await asyncio.sleep(len(chunk) / bytes_per_s)

    headers = {"content-length": str(path.stat().st_size)}
    return StreamingResponse(body(), media_type=media_type, headers=headers)
