"""Dataset snapshots over HTTP: list, manifest, download, create (trusted clients)."""

from __future__ import annotations

import asyncio
from typing import Annotated, Literal

import msgspec
from litestar import Request, Response, get, post
from litestar.params import FromPath, JSONBody
from litestar.response import File

from command_api.routes import idempotency_key
from domain.errors import ErrorCode, OasstError
from query_api.common import client_of


class SnapshotRequest(msgspec.Struct, kw_only=True):
    """``oasst snapshot create``'s options (``from_id`` re-derives that snapshot)."""

    at: Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)] | None = None
    policy: Literal["oa", "trust"] = "oa"
    states: list[str] | None = None
    langs: list[str] = []
    deleted: Literal["exclude", "include"] = "exclude"
    spam: Literal["exclude", "include"] = "exclude"
    synthetic: Literal["exclude", "include", "only"] = "exclude"
    min_review_count: Annotated[int, msgspec.Meta(ge=0, le=1_000_000)] = 0
    sft_max_rank: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] | None = None
    from_id: str | None = None
    exclusions: Literal["as_of_position", "latest"] = "as_of_position"


def _not_found(e: Exception) -> OasstError:
    return OasstError(str(e), ErrorCode.GENERIC_ERROR, 404)


@get("/snapshots", summary="Snapshot manifests, oldest position first")
async def list_snapshots(request: Request) -> list[dict]:
    from projections.snapshot import list_snapshots

    client_of(request)
    return [s.manifest for s in list_snapshots(request.app.state.settings.data_dir)]


@get("/snapshots/{snapshot_id:str}", summary="One snapshot's manifest")
async def get_snapshot(request: Request, snapshot_id: FromPath[str]) -> dict:
    from projections.snapshot import SnapshotError, load_manifest

    client_of(request)
    try:
        return load_manifest(request.app.state.settings.data_dir, snapshot_id)
    except SnapshotError as e:
        raise _not_found(e) from None


@get("/snapshots/{snapshot_id:str}/files/{name:str}", summary="Download a snapshot file (trusted)")
async def get_snapshot_file(request: Request, snapshot_id: FromPath[str], name: FromPath[str]) -> File:
    from projections.snapshot import SnapshotError, snapshot_file

    client_of(request, trusted=True)  # user ids and texts: moderators and pipelines only
    try:
        path = snapshot_file(request.app.state.settings.data_dir, snapshot_id, name)
    except SnapshotError as e:
        raise _not_found(e) from None
    return File(path=path, filename=name)


@post("/snapshots", status_code=201, summary="Create a snapshot (trusted)")
async def create_snapshot_route(request: Request, data: JSONBody[SnapshotRequest]) -> Response:
    from projections.dataset import Selection
    from projections.snapshot import SnapshotError, SnapshotSpec, create_snapshot, load_manifest, spec_from_manifest

    client = client_of(request, trusted=True)
    settings = request.app.state.settings
    try:
        if data.from_id:
            spec = spec_from_manifest(load_manifest(settings.data_dir, data.from_id), data.exclusions)
        else:
            selection = Selection(
                states=Selection.states if data.states is None else tuple(data.states), langs=tuple(data.langs),
                deleted=data.deleted, spam=data.spam, synthetic=data.synthetic, min_review_count=data.min_review_count,
            )
            spec = SnapshotSpec(position=data.at, policy=data.policy, selection=selection,
                                exclusions=data.exclusions, sft_max_rank=data.sft_max_rank)
        # folding the log takes a while: off the event loop, with its own connection
        manifest = await asyncio.to_thread(create_snapshot, settings, spec, record=False)
    except SnapshotError as e:
        raise OasstError(str(e), ErrorCode.REQUEST_VALIDATION_FAILED, 422) from None
    # recording it is a command: idempotent, and the runner and relay hear of it at once
    recorded = await request.app.state.service.record_snapshot(
        client.id, {k: v for k, v in manifest.items() if k != "timings"}, idempotency_key(request))
    return Response(manifest, status_code=201, headers={"X-Log-Position": str(recorded.position)})


snapshot_handlers = [list_snapshots, get_snapshot, get_snapshot_file]
snapshot_commands = [create_snapshot_route]  # served where commands are
