"""Bearer JWTs for the gateway: who a request is, checked once per request.

HS256 with the shared secret ``CHATLOG_AUTH_SECRET`` is the embedded default (JWKS and
RS256 come later). A token is accepted only if its signature, ``iss``, ``aud``, ``exp``
and ``nbf`` all check: ``exp`` is required, so a token that never expires is refused
rather than trusted forever. The user is ``sub``; the tenant is the claim that
``CHATLOG_AUTH_TENANT_CLAIM`` names (``default`` when the token has none). Both must be
valid ids (`chatlog.schemas.ids`), since they end up in Kafka keys and Redis key names.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import jwt

from chatlog.schemas.errors import ConfigError, InvalidId, Unauthenticated
from chatlog.schemas.ids import validate_id
from chatlog.settings import Settings

__all__ = ["ALGORITHM", "Principal", "TokenIssuer", "TokenVerifier"]

ALGORITHM = "HS256"
# Clocks of the issuer and the gateway differ a little; more would stretch every token.
_LEEWAY_S = 5.0


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a request is: a user of a tenant, as the token says."""

    user_id: str
    tenant: str

    def __str__(self) -> str:
        # The audit trail names who acts; the gateway acts for this user.
        return f"jwt:{self.tenant}/{self.user_id}"


def _secret(settings: Settings) -> str:
    if settings.auth_secret is None:
        raise ConfigError(
            "CHATLOG_AUTH_SECRET is not set: the gateway's tokens need a shared secret of at "
            "least 32 bytes; make one with python -c 'import secrets; "
            "print(secrets.token_urlsafe(32))'",
            setting="CHATLOG_AUTH_SECRET",
        )
    return settings.auth_secret.get_secret_value()


class TokenVerifier:
    """Checks a bearer token and says whose it is."""

    def __init__(self, *, secret: str, issuer: str, audience: str, tenant_claim: str) -> None:
        self._secret = secret
        self.issuer = issuer
        self.audience = audience
        self.tenant_claim = tenant_claim

    @classmethod
    def from_settings(cls, settings: Settings) -> TokenVerifier:
        """The verifier of the ``CHATLOG_AUTH_*`` settings (`ConfigError` without a secret)."""
        return cls(
            secret=_secret(settings),
            issuer=settings.auth_issuer,
            audience=settings.auth_audience,
            tenant_claim=settings.auth_tenant_claim,
        )

    def verify(self, token: str) -> Principal:
        """The principal of `token`; `Unauthenticated` naming why it is refused."""
        if not token:
            raise Unauthenticated("no bearer token: send Authorization: Bearer <JWT>")
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                self._secret,
                # One algorithm, fixed here: the token's own header never chooses it.
                algorithms=[ALGORITHM],
                issuer=self.issuer,
                audience=self.audience,
                leeway=_LEEWAY_S,
                options={"require": ["exp", "iss", "aud", "sub"]},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthenticated("the token has expired") from None
        except jwt.ImmatureSignatureError:
            raise Unauthenticated("the token is not valid yet (nbf)") from None
        except jwt.InvalidAudienceError:
            raise Unauthenticated("the token is for another audience") from None
        except jwt.InvalidIssuerError:
            raise Unauthenticated("the token is from another issuer") from None
        except jwt.MissingRequiredClaimError as exc:
            raise Unauthenticated(f"the token has no {exc.claim} claim") from None
        except jwt.InvalidTokenError:
            # A bad signature, a wrong algorithm, garbage: one answer, no detail to probe.
            raise Unauthenticated("the token is invalid") from None
        tenant = claims.get(self.tenant_claim, "default")
        try:
            return Principal(
                user_id=validate_id(claims["sub"], field="sub"),
                tenant=validate_id(tenant, field=self.tenant_claim),
            )
        except InvalidId as exc:
            raise Unauthenticated(
                f"the token's {exc.context.get('field')} is no valid id"
            ) from None


class TokenIssuer:
    """Mints tokens the verifier of the same settings accepts (`chatlog token`)."""

    def __init__(self, *, secret: str, issuer: str, audience: str, tenant_claim: str) -> None:
        self._secret = secret
        self.issuer = issuer
        self.audience = audience
        self.tenant_claim = tenant_claim

    @classmethod
    def from_settings(cls, settings: Settings) -> TokenIssuer:
        """The issuer of the ``CHATLOG_AUTH_*`` settings (`ConfigError` without a secret)."""
        return cls(
            secret=_secret(settings),
            issuer=settings.auth_issuer,
            audience=settings.auth_audience,
            tenant_claim=settings.auth_tenant_claim,
        )

    def mint(
        self,
        user_id: str,
        *,
        tenant: str = "default",
        ttl_s: float = 3600.0,
        now: float | None = None,
        **claims: Any,
    ) -> str:
        """A signed token for `user_id` of `tenant`, valid for `ttl_s` from `now`."""
        validate_id(user_id, field="user_id")
        validate_id(tenant, field="tenant")
        issued = int(time.time() if now is None else now)
        payload: dict[str, Any] = {
            "iss": self.issuer,
            "aud": self.audience,
            "sub": user_id,
            self.tenant_claim: tenant,
            "iat": issued,
            "nbf": issued,
            "exp": issued + int(ttl_s),
            **claims,
        }
        return jwt.encode(payload, self._secret, algorithm=ALGORITHM)
