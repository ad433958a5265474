"""Dataset snapshots over HTTP: list, manifest, download, create (trusted clients)."""

from __future__ import annotations

import asyncio
from typing import Annotated, Literal

import msgspec
from litestar import Response, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody
from litestar.response import File

from command_api.auth import Client, IdempotencyKey, api_client, trusted_client
from command_api.routes import Service
from domain.errors import ErrorCode, OasstError
from infra.settings import Settings


class SnapshotRequest(msgspec.Struct, kw_only=True):
    """``oasst snapshot create``'s options (``from_id`` re-derives that snapshot)."""

    at: Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)] | None = None
    policy: Literal["oa", "trust", "trust-v2"] = "oa"
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


@get("/snapshots", summary="Snapshot manifests, oldest position first", guards=[api_client])
async def list_snapshots(settings: NamedDependency[Settings]) -> list[dict]:
    from projections.snapshot import list_snapshots

    return [s.manifest for s in list_snapshots(settings.data_dir)]


@get("/snapshots/{snapshot_id:str}", summary="One snapshot's manifest", guards=[api_client])
async def get_snapshot(settings: NamedDependency[Settings], snapshot_id: FromPath[str]) -> dict:
    from projections.snapshot import SnapshotError, load_manifest

    try:
        return load_manifest(settings.data_dir, snapshot_id)
    except SnapshotError as e:
        raise _not_found(e) from None


# user ids and texts: moderators and pipelines only
@get(
    "/snapshots/{snapshot_id:str}/files/{name:str}",
    summary="Download a snapshot file (trusted)",
    guards=[trusted_client],
)
async def get_snapshot_file(
    settings: NamedDependency[Settings], snapshot_id: FromPath[str], name: FromPath[str]
) -> File:
    from projections.snapshot import SnapshotError, snapshot_file

    try:
        path = snapshot_file(settings.data_dir, snapshot_id, name)
    except SnapshotError as e:
        raise _not_found(e) from None
    return File(path=path, filename=name)


@post("/snapshots", status_code=201, summary="Create a snapshot (trusted)", guards=[trusted_client])
async def create_snapshot_route(
    data: JSONBody[SnapshotRequest], service: Service, client: Client, ikey: IdempotencyKey = None
) -> Response:
    from projections.dataset import Selection
    from projections.snapshot import NoRoom, SnapshotError, create_snapshot, snapshot_spec

    settings = service.settings
    try:
        selection = Selection(
            states=Selection.states if data.states is None else tuple(data.states),
            langs=tuple(data.langs),
            deleted=data.deleted,
            spam=data.spam,
            synthetic=data.synthetic,
            min_review_count=data.min_review_count,
        )
        spec = snapshot_spec(
            settings.data_dir,
            data.from_id,
            data.exclusions,
            position=data.at,
            policy=data.policy,
            selection=selection,
            sft_max_rank=data.sft_max_rank,
        )
        # folding the log takes a while: off the event loop, with its own connection
        manifest = await asyncio.to_thread(create_snapshot, settings, spec, record=False)
    except NoRoom as e:  # 507 Insufficient Storage: the service goes on; nothing was kept or recorded
        raise OasstError(str(e), ErrorCode.GENERIC_ERROR, 507) from None
    except SnapshotError as e:
        raise OasstError(str(e), ErrorCode.REQUEST_VALIDATION_FAILED, 422) from None
    # recording it is a command: idempotent, and the runner and relay hear of it at once
    recorded = await service.record_snapshot(client.id, {k: v for k, v in manifest.items() if k != "timings"}, ikey)
    return Response(manifest, status_code=201, headers={"X-Log-Position": str(recorded.position)})


snapshot_handlers = [list_snapshots, get_snapshot, get_snapshot_file]
snapshot_commands = [create_snapshot_route]  # served where commands are
