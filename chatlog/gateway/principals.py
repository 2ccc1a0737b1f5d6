"""Who a gateway request is: the principals, and the one rule that finds a request's.

A request proves who it is in one of two ways, and is one of three kinds of principal:

- **a user's JWT** (``Authorization: Bearer eyJ...``): a `Principal` of kind ``user``, the
  token's ``sub`` in its tenant (`chatlog.gateway.tokens`);
- **a service API key** (``Authorization: Bearer clk_...`` or ``X-API-Key: clk_...``) of a
  back end: a `Principal` of kind ``service`` acting for the user that the
  ``Chatlog-User`` header names, always in the key's own tenant
  (`chatlog.gateway.api_keys`);
- **an operator's API key** (made with ``--operator``): an `Operator`, who may use the
  operator routes and is refused (`Forbidden`) on every route of user data.

Only a service key may name a user. A user's token that sends ``Chatlog-User`` is
refused (`Forbidden`), whoever it names: the user is never taken from a header, a body
or a path on the word of the caller alone. ``str()`` of a principal is how the audit
trail names who acted: ``jwt:acme/alice``, ``apikey:backend->acme/alice``,
``operator:oncall``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from chatlog.gateway.api_keys import is_api_key
from chatlog.schemas.errors import Forbidden, InvalidInput, Unauthenticated
from chatlog.schemas.ids import validate_id

if TYPE_CHECKING:
    from chatlog.gateway.api_keys import ApiKeys
    from chatlog.gateway.tokens import TokenVerifier

__all__ = ["ACTING_USER_HEADER", "Authenticator", "Operator", "Principal"]

ACTING_USER_HEADER = "Chatlog-User"
"""The header in which a service API key names the user it acts for."""


@dataclass(frozen=True, slots=True)
class Principal:
    """Whose data a request reads and writes: a user of a tenant, acting themselves
    (their JWT) or through a back end's service key (`via`, the key's name)."""

    user_id: str
    tenant: str
    via: str | None = None

    @property
    def kind(self) -> Literal["user", "service"]:
        """``user`` for the user's own token, ``service`` for a back end acting for them."""
        return "user" if self.via is None else "service"

    def __str__(self) -> str:
        # The audit trail names who acts, and for whom.
        if self.via is None:
            return f"jwt:{self.tenant}/{self.user_id}"
        return f"apikey:{self.via}->{self.tenant}/{self.user_id}"


@dataclass(frozen=True, slots=True)
class Operator:
    """An operator's API key (`name`): no user's data, only the operator routes."""

    name: str

    @property
    def kind(self) -> Literal["operator"]:
        return "operator"

    def __str__(self) -> str:
        return f"operator:{self.name}"


class Authenticator:
    """Finds a request's principal from its credentials (the rule in the module doc)."""

    def __init__(self, tokens: TokenVerifier, api_keys: ApiKeys) -> None:
        self.tokens = tokens
        self.api_keys = api_keys

    @property
    def may_block(self) -> bool:
        """Whether a check may wait on the network: a JWKS fetch, for a key not cached."""
        return self.tokens.config.jwks_url is not None

    def authenticate(
        self, *, bearer: str | None, api_key: str | None, acting_user: str | None
    ) -> Principal | Operator:
        """The principal of a request that sent `bearer` (``Authorization: Bearer``),
        `api_key` (``X-API-Key``) and `acting_user` (``Chatlog-User``), any of them None.

        `Unauthenticated` when no credential checks; `Forbidden` for a user's token naming
        a user; `InvalidInput` for two credentials, or a service key that names no user.
        Errors never quote a credential.
        """
        if bearer and api_key:
            raise InvalidInput("send one credential: Authorization: Bearer or X-API-Key, not both")
        credential = bearer or api_key
        if not credential:
            raise Unauthenticated("no credentials: send Authorization: Bearer <JWT or API key>")
        if api_key is not None or is_api_key(credential):
            key = self.api_keys.check(credential)
            if key.scope == "operator":
                return Operator(key.name)
            if acting_user is None:
                raise InvalidInput(
                    f"a service API key acts for a user of its tenant: name them in the "
                    f"{ACTING_USER_HEADER} header"
                )
            return Principal(
                user_id=validate_id(acting_user, field=ACTING_USER_HEADER),
                tenant=key.tenant,
                via=key.name,
            )
        principal = self.tokens.verify(credential)
        if acting_user is not None:
            raise Forbidden(
                f"only a service API key may name a user ({ACTING_USER_HEADER}); a user's "
                f"token acts for its own sub: drop the header"
            )
        return principal

    def user(
        self, *, bearer: str | None, api_key: str | None, acting_user: str | None
    ) -> Principal:
        """The principal for a route of user data: an operator is refused (`Forbidden`)."""
        principal = self.authenticate(bearer=bearer, api_key=api_key, acting_user=acting_user)
        if isinstance(principal, Operator):
            raise Forbidden(
                "an operator's API key reads no user's data: use a user's token, or a "
                "service key with Chatlog-User"
            )
        return principal
