"""A no-op server for the ingest baseline: the three task routes, their bodies parsed
with msgspec like the real server's, and nothing else. Served like ``oasst serve``
(uvicorn, uvloop, httptools, one process) so that only the work behind the routes differs.

    python bench/noop_server.py --port 8099
"""

from __future__ import annotations

import argparse
import sys
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import uvicorn  # noqa: E402
from litestar import Litestar, Response, post  # noqa: E402

from domain import protocol as p  # noqa: E402

# A plausible assistant_reply task, about the size of a real one.
TASK = {
    "type": "assistant_reply",
    "conversation": {
        "messages": [
            {
                "id": str(uuid.uuid4()),
                "user_id": str(uuid.uuid4()),
                "frontend_message_id": "fm-0",
                "text": "What is the capital of France, and why did it become the capital?",
                "lang": "en",
                "is_assistant": False,
                "emojis": {},
                "user_emojis": [],
                "user_is_author": False,
                "synthetic": False,
            }
        ]
    },
}


@post("/api/v1/tasks/", status_code=200)
async def request_task(data: p.TaskRequest) -> dict:
    return {"id": str(uuid.uuid4()), **TASK}


@post("/api/v1/tasks/{task_id:str}/ack", status_code=204)
async def ack_task(task_id: str, data: p.TaskAck) -> None:
    return None


@post("/api/v1/tasks/interaction", status_code=200)
async def interaction(data: p.Interaction) -> Response:
    return Response({"type": "task_done", "id": str(uuid.uuid4())}, headers={"X-Log-Position": "0"})


app = Litestar(route_handlers=[request_task, ack_task, interaction], debug=False)

if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=8099)
    args = parser.parse_args()
    uvicorn.run(
        app, host="127.0.0.1", port=args.port, log_level="warning", loop="uvloop", http="httptools", access_log=False
    )
