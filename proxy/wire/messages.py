"""Frontend (client-to-server) messages of the PostgreSQL protocol, as plain values.

Each class mirrors one message of the protocol chapter of the PostgreSQL
documentation ("Message Formats"). The decoder in ``proxy.wire.codec`` builds
them; nothing here knows about bytes on a socket.
"""

from __future__ import annotations

from dataclasses import dataclass, field

PROTOCOL_3_0 = 196608
PROTOCOL_3_2 = 196610


@dataclass(frozen=True, slots=True)
class StartupMessage:
    """The first real message of a session: protocol version and run-time parameters."""

    version: int
    params: dict[str, str] = field(default_factory=dict)

    @property
    def major(self) -> int:
        """Major protocol version (3 for every version we accept)."""
        return self.version >> 16

    @property
    def minor(self) -> int:
        """Minor protocol version (0 or 2 in practice)."""
        return self.version & 0xFFFF


@dataclass(frozen=True, slots=True)
class SSLRequest:
    """The client asks to upgrade the connection to TLS."""


@dataclass(frozen=True, slots=True)
class GSSENCRequest:
    """The client asks for GSSAPI encryption (we always answer 'N')."""


@dataclass(frozen=True, slots=True)
class CancelRequest:
    """Sent on a fresh connection to cancel the query running on another one."""

    pid: int
    secret: bytes


@dataclass(frozen=True, slots=True)
class Query:
    """Simple-protocol query string (may hold several statements)."""

    sql: str


@dataclass(frozen=True, slots=True)
class Parse:
    """Extended protocol: prepare a statement ("" is the unnamed statement)."""

    name: str
    query: str
    param_oids: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class Bind:
    """Extended protocol: bind parameter values to a statement, creating a portal."""

    portal: str
    statement: str
    param_formats: tuple[int, ...] = ()
    params: tuple[bytes | None, ...] = ()
    result_formats: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class Describe:
    """Extended protocol: describe a statement (kind 'S') or a portal (kind 'P')."""

    kind: str
    name: str


@dataclass(frozen=True, slots=True)
class Execute:
    """Extended protocol: run a portal; ``max_rows`` 0 means no limit."""

    portal: str
    max_rows: int = 0


@dataclass(frozen=True, slots=True)
class Close:
    """Extended protocol: close a statement (kind 'S') or a portal (kind 'P')."""

    kind: str
    name: str


@dataclass(frozen=True, slots=True)
class Sync:
    """End of an extended-protocol batch: the server answers ReadyForQuery."""


@dataclass(frozen=True, slots=True)
class Flush:
    """Ask the server to deliver any pending output now."""


@dataclass(frozen=True, slots=True)
class Terminate:
    """The client is closing the connection."""


@dataclass(frozen=True, slots=True)
class PasswordData:
    """Type 'p': a password, SASLInitialResponse or SASLResponse.

    Which one it is depends on the authentication state, so the raw payload is kept
    and interpreted by the session (see ``parse_sasl_initial``).
    """

    data: bytes


@dataclass(frozen=True, slots=True)
class FunctionCall:
    """Legacy fast-path function call; kept raw because we only ever refuse it."""

    raw: bytes


@dataclass(frozen=True, slots=True)
class CopyData:
    """A chunk of COPY data."""

    data: bytes


@dataclass(frozen=True, slots=True)
class CopyDone:
    """End of a COPY-in stream."""


@dataclass(frozen=True, slots=True)
class CopyFail:
    """The client aborts a COPY-in stream."""

    message: str


FrontendMessage = (
    StartupMessage
    | SSLRequest
    | GSSENCRequest
    | CancelRequest
    | Query
    | Parse
    | Bind
    | Describe
    | Execute
    | Close
    | Sync
    | Flush
    | Terminate
    | PasswordData
    | FunctionCall
    | CopyData
    | CopyDone
    | CopyFail
)
