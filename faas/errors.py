"""The project's errors, one hierarchy.

    FaasError
    ├── InvalidSpec(field, reason)        bad input; nothing was changed
    ├── FunctionNotFound(name)
    ├── FunctionExists(name)
    ├── SecretNotFound(name)
    ├── SecretExists(name)
    ├── SecretInUse(name, functions)      removing a secret functions still list (409)
    ├── ImageNotFound(image, reason)
    ├── RegistryUnreachable(image, registry, reason)  the pull could not reach the registry (502)
    ├── DeployFailed(name, reason, cause, logs)  the new version never became ready
    ├── BuildFailed(reason, log)          an image build failed; nothing deployed
    ├── Unauthorized(reason)              no credentials (401)
    ├── Forbidden(reason)                 credentials that do not allow this (403)
    ├── PayloadTooLarge(reason)           a request body over the function's limit (413)
    ├── TooManyRequests(reason, retry_after)  a client locked out after failed credentials (429)
    ├── GatewayTimeout(reason)            a function did not start answering in time (504)
    ├── WakeFailed(name, reason, cause)   a stopped function did not start for a request
    ├── NoRoom(name, needed, free)        another replica would not fit into the host's memory
    ├── ProviderError(reason)             the engine failed or is unreachable
    ├── InvalidCallback(url, reason)      an X-Callback-Url refused (400)
    ├── QueueUnavailable(reason)          NATS unreachable (503)
    ├── QueueFull(reason)                 the async queue is full (429)
    ├── CallNotFound(call_id)             no such queued or failed async call (404)
    ├── CallInFlight(call_id)             an async call being made cannot be changed (409)
    └── ApiError(status, message)         the management API refused (client side)

Foreign exceptions (Docker SDK, HTTP clients) are translated into these at the
one module that talks to each foreign library; the HTTP layer maps them to
status codes in one table (`faas.gateway.STATUS`). A failed start carries its
`Cause` as a field, set where it is raised, so nothing parses messages.
"""

import enum
import math


class Cause(enum.StrEnum):
    """Why a container did not become ready (a small, fixed set: metric labels)."""

    TIMEOUT = "timeout"  # no HTTP answer within the ready timeout
    EXITED = "exited"  # the process exited (crashed, bad command)
    OOM = "oom"  # killed for exceeding its memory limit
    ROUTE = "route"  # running and answering, but the proxy did not route it in time
    ENGINE = "engine"  # the engine refused or failed
    INVALID = "invalid"  # its labels do not describe a valid function


class FaasError(Exception):
    """Root of every error the platform raises on purpose."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def detail(self) -> object:
        """Structured detail for the JSON error body."""
        return None


class InvalidSpec(FaasError):
    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}" if field else reason)
        self.field = field
        self.reason = reason

    def detail(self) -> object:
        return {"field": self.field, "reason": self.reason}


class FunctionNotFound(FaasError):
    def __init__(self, name: str) -> None:
        super().__init__(f"function {name!r} not found")
        self.name = name


class FunctionExists(FaasError):
    def __init__(self, name: str) -> None:
        super().__init__(f"function {name!r} already exists (use PUT to update it)")
        self.name = name


class SecretNotFound(FaasError):
    def __init__(self, name: str) -> None:
        super().__init__(f"secret {name!r} not found")
        self.name = name


class SecretExists(FaasError):
    def __init__(self, name: str) -> None:
        super().__init__(f"secret {name!r} already exists (update it instead)")
        self.name = name


class SecretInUse(FaasError):
    """A secret cannot go while functions list it: they would lose the file."""

    def __init__(self, name: str, functions: list[str]) -> None:
        super().__init__(
            f"secret {name!r} is used by {', '.join(functions)}: deploy them without it "
            "(or remove them) first"
        )
        self.name = name
        self.functions = functions

    def detail(self) -> object:
        return {"secret": self.name, "functions": self.functions}


class ImageNotFound(FaasError):
    def __init__(self, image: str, reason: str) -> None:
        super().__init__(f"image {image!r} not found: {reason}")
        self.image = image
        self.reason = reason

    def detail(self) -> object:
        return {"image": self.image, "reason": self.reason}


class RegistryUnreachable(FaasError):
    """The engine could not talk to the image's registry: nothing is known about
    the image itself (compare ImageNotFound, which the registry said)."""

    def __init__(self, image: str, registry: str, reason: str) -> None:
        super().__init__(f"cannot reach the registry {registry} to pull {image!r}: {reason}")
        self.image = image
        self.registry = registry
        self.reason = reason

    def detail(self) -> object:
        return {"image": self.image, "registry": self.registry, "reason": self.reason}


class DeployFailed(FaasError):
    def __init__(self, name: str, reason: str, cause: Cause, logs: str = "") -> None:
        super().__init__(f"function {name!r} did not start: {reason}")
        self.name = name
        self.reason = reason
        self.cause = cause
        self.logs = logs

    def detail(self) -> object:
        return {
            "function": self.name,
            "reason": self.reason,
            "cause": self.cause,
            "logs": self.logs,
        }


class Unauthorized(FaasError):
    pass


class Forbidden(FaasError):
    pass


class PayloadTooLarge(FaasError):
    pass


class TooManyRequests(FaasError):
    """A client is locked out for `retry_after` seconds (faas/throttle.py)."""

    def __init__(self, reason: str, retry_after: float) -> None:
        super().__init__(reason)
        self.retry_after = retry_after

    def detail(self) -> object:
        return {"retry_after": math.ceil(self.retry_after)}


class ProviderError(FaasError):
    pass


class Unreached(ProviderError):
    """A function's address refused the connection: nothing of the request was sent."""


class ApiError(FaasError):
    """The management API answered with an error (raised by the client)."""

    def __init__(self, status: int, message: str, detail: object = None) -> None:
        super().__init__(message)
        self.status = status
        self._detail = detail

    def detail(self) -> object:
        return self._detail


class WakeFailed(FaasError):
    """A stopped function could not be started for a request."""

    def __init__(self, name: str, reason: str, cause: Cause) -> None:
        super().__init__(f"function {name!r} could not be woken: {reason}")
        self.name = name
        self.reason = reason
        self.cause = cause

    def detail(self) -> object:
        return {"function": self.name, "reason": self.reason, "cause": self.cause}


class BuildFailed(FaasError):
    def __init__(self, reason: str, log: str = "") -> None:
        super().__init__(f"build failed: {reason}")
        self.reason = reason
        self.log = log

    def detail(self) -> object:
        return {"reason": self.reason, "log": self.log}


class GatewayTimeout(FaasError):
    """A function did not start answering a forwarded request in time."""


class NoRoom(FaasError):
    """Another replica's memory limit does not fit beside the running functions' limits."""

    def __init__(self, name: str, needed: int, free: int) -> None:
        super().__init__(
            f"no room for another replica of {name!r}: it may use {needed >> 20} MiB, "
            f"{max(free, 0) >> 20} MiB of the host's memory are left after the running "
            "functions' limits"
        )
        self.name = name
        self.needed = needed
        self.free = free

    def detail(self) -> object:
        return {"function": self.name, "needed_bytes": self.needed, "free_bytes": self.free}


class InvalidCallback(FaasError):
    """An X-Callback-Url the platform will not call (malformed, or refused: SSRF) (400)."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"X-Callback-Url {url!r}: {reason}")
        self.url = url
        self.reason = reason

    def detail(self) -> object:
        return {"field": "X-Callback-Url", "reason": self.reason}


class QueueUnavailable(FaasError):
    """NATS (the queue of asynchronous calls) is unreachable or refused (503)."""


class QueueFull(FaasError):
    """The queue of asynchronous calls holds FAAS_ASYNC_MAX_QUEUE_BYTES already (429)."""


class CallNotFound(FaasError):
    """No queued or failed asynchronous call has this id (404)."""

    def __init__(self, call_id: str) -> None:
        super().__init__(f"no queued or failed call {call_id!r}")
        self.call_id = call_id

    def detail(self) -> object:
        return {"call": self.call_id}


class CallInFlight(FaasError):
    """The call is being made right now: it cannot be dropped or retried (409)."""

    def __init__(self, call_id: str) -> None:
        super().__init__(f"call {call_id!r} is in flight; try again when it has ended")
        self.call_id = call_id
