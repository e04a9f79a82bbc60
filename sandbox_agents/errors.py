"""The one exception tree of KripTik Fleet.

Every error we raise derives from :class:`KriptikError`, and also from the builtin it
resembles, so callers may catch either (``except TimeoutError`` still works). Errors carry
fields, not just strings. Errors from Modal, Redis and the LLM SDKs are translated into
these where they enter our code.
"""

from __future__ import annotations


class KriptikError(Exception):
    """Base of every error KripTik Fleet raises on purpose.

    Errors cross process boundaries (Ray pickles them from an actor to its caller), and
    ours take keyword-only fields, so pickling rebuilds them from args plus fields.
    """

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild, (type(self), self.args, dict(self.__dict__)))


def _rebuild(cls: type[KriptikError], args: tuple[object, ...], state: dict[str, object]) -> KriptikError:
    error = cls.__new__(cls)
    Exception.__init__(error, *args)
    error.__dict__.update(state)
    return error


class ConfigError(KriptikError, ValueError):
    """A setting or config is missing or invalid."""


class InvalidInputError(KriptikError, ValueError):
    """A caller passed input that fails validation; ``field`` names what was wrong."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


# --- sandboxes -------------------------------------------------------------------------


class SandboxError(KriptikError):
    """Something went wrong with one sandbox."""

    def __init__(self, message: str, *, sandbox_id: str | None = None) -> None:
        super().__init__(message)
        self.sandbox_id = sandbox_id


class SandboxNotFoundError(SandboxError, LookupError):
    """No sandbox (or snapshot) with that id exists on this backend."""


class SandboxDeadError(SandboxError, RuntimeError):
    """The sandbox's processes are gone (terminated, expired, killed or lost)."""


class SandboxPathError(SandboxError, PermissionError):
    """A path would escape the sandbox workspace (``..``, absolute, or a symlink out)."""

    def __init__(self, message: str, *, path: str, sandbox_id: str | None = None) -> None:
        super().__init__(message, sandbox_id=sandbox_id)
        self.path = path


class SandboxTimeoutError(SandboxError, TimeoutError):
    """A command ran past its timeout; its whole process tree was killed."""

    def __init__(
        self,
        message: str,
        *,
        timeout_s: float,
        stdout: str = "",
        stderr: str = "",
        sandbox_id: str | None = None,
    ) -> None:
        super().__init__(message, sandbox_id=sandbox_id)
        self.timeout_s = timeout_s
        self.stdout = stdout
        self.stderr = stderr


class SandboxLimitError(SandboxError, OSError):
    """A sandbox could not be given the resources its spec asks for."""


class SnapshotError(SandboxError):
    """A snapshot could not be taken or restored."""


class BackendUnavailableError(KriptikError, ConnectionError):
    """A sandbox backend cannot be reached or used here (missing tool, credentials, network)."""

    def __init__(self, message: str, *, backend: str) -> None:
        super().__init__(message)
        self.backend = backend


# --- context bus -----------------------------------------------------------------------


class BusError(KriptikError):
    """The context bus failed."""


class BusUnavailableError(BusError, ConnectionError):
    """Redis cannot be reached and the publisher's bounded buffer is full."""


class BusDecodeError(BusError, ValueError):
    """A stream entry is not a valid message (bad msgpack, unknown type, bad fields)."""


class BusMalformedEntryError(BusDecodeError):
    """A stream entry could not be decoded; ``reason`` says which step refused it.

    Reasons: ``missing_body``, ``bad_header``, ``zstd``, ``msgpack``, ``envelope``,
    ``unknown_type``, ``invalid_fields``, ``not_serialisable``.
    """

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class BusBufferFullError(BusUnavailableError):
    """Redis is down and the publisher already holds ``limit`` unsent messages; nothing was dropped."""

    def __init__(self, message: str, *, buffered: int, limit: int) -> None:
        super().__init__(message)
        self.buffered = buffered
        self.limit = limit


# --- LLM providers ---------------------------------------------------------------------


class LLMError(KriptikError):
    """An LLM provider failed."""

    def __init__(self, message: str, *, provider: str = "") -> None:
        super().__init__(message)
        self.provider = provider


class LLMConfigError(LLMError, ValueError):
    """The provider is not configured (no key, unknown model, bad base URL)."""


class LLMRateLimitError(LLMError):
    """The provider kept answering 429 after every retry."""


class LLMTimeoutError(LLMError, TimeoutError):
    """The provider did not answer in time after every retry."""


class LLMServerError(LLMError):
    """The provider kept failing (5xx or connection errors) after every retry."""


class CassetteMissError(LLMError, LookupError):
    """Replay has no recorded turn for (role, task, turn); replay never invents one."""

    def __init__(self, message: str, *, role: str, task: str, turn: int) -> None:
        super().__init__(message, provider="replay")
        self.role = role
        self.task = task
        self.turn = turn


# --- builds ----------------------------------------------------------------------------


class BuildError(KriptikError):
    """A build cannot go on."""


class BuildNotFoundError(BuildError, LookupError):
    """No build with that id exists for this user."""


class BudgetExceededError(BuildError):
    """The build's budget is spent."""


class BuildActiveError(BuildError):
    """The build has not ended: what was asked needs it finished (cancel it first); a 409."""


class StoreError(KriptikError, RuntimeError):
    """The build store cannot do what was asked (misuse of a transaction, a newer schema, a broken file)."""


class ContractError(BuildError, ValueError):
    """An intent contract is invalid or has drifted from its lock."""
