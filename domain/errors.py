"""Open-Assistant's error codes and the error every refused command raises.

Codes are OA's (``oasst_shared.exceptions.OasstErrorCode``) so frontends keep working;
codes 102 and 104-106 are this project's additions (see README).
Every error leaves the service as ``{"error_code": int, "message": str}``. The domain
(domain/decide.py) raises codes only; the HTTP status of each code is OA's, from the
table below; a code OA answers with different statuses in different places (2100: 404 for an
ack or a close, 400 elsewhere) is raised with an explicit status where it is not 400.
"""

from __future__ import annotations

from enum import IntEnum


class ErrorCode(IntEnum):
    GENERIC_ERROR = 0
    API_CLIENT_NOT_AUTHORIZED = 2
    ROOT_TOKEN_NOT_AUTHORIZED = 3
    SORT_KEY_UNSUPPORTED = 100
    REQUEST_VALIDATION_FAILED = 102
    STORE_UNAVAILABLE = 104
    REQUEST_TOO_LARGE = 105
    VIEWS_BEHIND = 106
    TOO_MANY_REQUESTS = 429
    SERVER_ERROR0 = 500

    TASK_INVALID_REQUEST_TYPE = 1000
    TASK_ACK_FAILED = 1001
    TASK_NACK_FAILED = 1002
    TASK_INVALID_RESPONSE_TYPE = 1003
    TASK_REQUESTED_TYPE_NOT_AVAILABLE = 1006
    TASK_MESSAGE_TOO_LONG = 1008
    TASK_MESSAGE_DUPLICATED = 1009
    TASK_MESSAGE_TEXT_EMPTY = 1010
    TASK_MESSAGE_DUPLICATE_REPLY = 1011
    TASK_TOO_MANY_PENDING = 1012

    INVALID_FRONTEND_MESSAGE_ID = 2000
    MESSAGE_NOT_FOUND = 2001
    INVALID_RANKING_VALUE = 2003
    NO_MESSAGE_TREE_FOUND = 2006
    INVALID_MESSAGE = 2008
    TREE_IN_ABORTED_STATE = 2010

    TEXT_LABELS_WRONG_MESSAGE_ID = 2050
    TEXT_LABELS_INVALID_LABEL = 2051
    TEXT_LABELS_MANDATORY_LABEL_MISSING = 2052
    TEXT_LABELS_NO_SELF_LABELING = 2053

    TASK_NOT_FOUND = 2100
    TASK_EXPIRED = 2101
    TASK_PAYLOAD_TYPE_MISMATCH = 2102
    TASK_ALREADY_UPDATED = 2103
    TASK_NOT_ACK = 2104
    TASK_ALREADY_DONE = 2105
    TASK_NOT_ASSIGNED_TO_USER = 2106
    TASK_NOT_COLLECTIVE = 2106  # OA gives both the same code

    USER_NOT_SPECIFIED = 4000
    USER_DISABLED = 4001
    USER_NOT_FOUND = 4002

    EMOJI_OP_UNSUPPORTED = 5000


HTTP_STATUS = {
    ErrorCode.API_CLIENT_NOT_AUTHORIZED: 403,
    ErrorCode.ROOT_TOKEN_NOT_AUTHORIZED: 403,
    ErrorCode.REQUEST_VALIDATION_FAILED: 422,
    ErrorCode.STORE_UNAVAILABLE: 503,
    ErrorCode.TOO_MANY_REQUESTS: 429,
    ErrorCode.MESSAGE_NOT_FOUND: 404,
    ErrorCode.NO_MESSAGE_TREE_FOUND: 404,
    ErrorCode.USER_NOT_FOUND: 404,
    ErrorCode.USER_DISABLED: 403,
    ErrorCode.TASK_REQUESTED_TYPE_NOT_AVAILABLE: 503,  # OA's answer when nothing is to be done
    ErrorCode.VIEWS_BEHIND: 503,
}


class OasstError(Exception):
    def __init__(self, message: str, code: ErrorCode, status: int | None = None):
        super().__init__(message, code, status)
        self.message = message
        self.code = code
        self.status = status or HTTP_STATUS.get(code, 400)

    def body(self) -> dict:
        return {"error_code": int(self.code), "message": self.message}
