"""Bearer JWTs for the gateway: who a request is, checked once per request.

Two ways to check a token's signature, chosen by the settings (`TokenSettings`):

- **HS256 with a shared secret** (``CHATLOG_AUTH_SECRET``): the embedded default, whose
  tokens `chatlog token` mints for development;
- **RS256/ES256 with a JWKS URL** (``CHATLOG_AUTH_JWKS_URL``): production, where an
  identity provider signs with its private keys and publishes the public ones. PyJWT's
  `PyJWKClient` caches the key set, fetches it again for a ``kid`` it does not know (a
  rotation), at most once per ``CHATLOG_AUTH_JWKS_REFRESH_S``, with a bounded timeout.

Either way the algorithms are the configured list (``CHATLOG_AUTH_ALGORITHMS``): the
token's own header never chooses outside it, ``none`` is never accepted, and with a JWKS
no shared secret exists at all (`chatlog.settings.check_auth_algorithms` has the rules).
A token is accepted only if its signature, ``iss``, ``aud``, ``exp`` and ``nbf`` all
check: ``exp`` is required, so a token that never expires is refused rather than trusted
forever. The user is ``sub``; the tenant is the claim that ``CHATLOG_AUTH_TENANT_CLAIM``
names (``default`` when the token has none). Both must be valid ids
(`chatlog.schemas.ids`), since they end up in Kafka keys and Redis key names.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import jwt

from chatlog.gateway.principals import Principal
from chatlog.schemas.errors import ConfigError, InvalidId, JwksUnavailable, Unauthenticated
from chatlog.schemas.ids import validate_id
from chatlog.settings import Settings, check_auth_algorithms

__all__ = [
    "JwksKeys",
    "Principal",
    "SharedSecret",
    "SigningKeys",
    "TokenIssuer",
    "TokenSettings",
    "TokenVerifier",
]

# Clocks of the issuer and the gateway differ a little; more would stretch every token.
_LEEWAY_S = 5.0
# How long a fetched key set is trusted before it is fetched again (PyJWT's default): a
# key the identity provider withdrew stops being accepted within this.
_JWKS_LIFESPAN_S = 300.0


@dataclass(frozen=True, slots=True)
class TokenSettings:
    """What checks (and mints) the gateway's tokens: one value the verifier and the
    issuer both take, built from the ``CHATLOG_AUTH_*`` settings by `from_settings`."""

    issuer: str = "chatlog"
    audience: str = "chatlog"
    tenant_claim: str = "tenant"
    # None: the default for the key source (HS256; RS256 and ES256 with a JWKS).
    algorithms: tuple[str, ...] | None = None
    secret: str | None = field(default=None, repr=False)
    jwks_url: str | None = None
    jwks_timeout_s: float = 5.0
    jwks_refresh_s: float = 30.0

    def __post_init__(self) -> None:
        try:
            allowed = check_auth_algorithms(
                self.algorithms, jwks_url=self.jwks_url, has_secret=self.secret is not None
            )
        except ValueError as exc:
            raise ConfigError(str(exc), setting="CHATLOG_AUTH_ALGORITHMS") from None
        object.__setattr__(self, "algorithms", allowed)

    @property
    def allowed(self) -> tuple[str, ...]:
        """The algorithms a token may be signed with (never empty, never ``none``)."""
        assert self.algorithms is not None  # set by __post_init__
        return self.algorithms

    @classmethod
    def from_settings(cls, settings: Settings) -> TokenSettings:
        """The token settings of the ``CHATLOG_AUTH_*`` settings."""
        secret = settings.auth_secret
        return cls(
            issuer=settings.auth_issuer,
            audience=settings.auth_audience,
            tenant_claim=settings.auth_tenant_claim,
            algorithms=settings.auth_algorithms,
            secret=None if secret is None else secret.get_secret_value(),
            jwks_url=settings.auth_jwks_url,
            jwks_timeout_s=settings.auth_jwks_timeout_s,
            jwks_refresh_s=settings.auth_jwks_refresh_s,
        )

    def shared_secret(self) -> str:
        """The HS* secret; `ConfigError` naming how to make one when it is not set."""
        if self.secret is None:
            raise ConfigError(
                "CHATLOG_AUTH_SECRET is not set: the gateway's tokens need a shared secret of "
                "at least 32 bytes (make one with python -c 'import secrets; "
                "print(secrets.token_urlsafe(32))'), or an identity provider's "
                "CHATLOG_AUTH_JWKS_URL",
                setting="CHATLOG_AUTH_SECRET",
            )
        return self.secret


class SigningKeys(Protocol):
    """Where the key that checks a token's signature comes from."""

    def key_for(self, token: str) -> Any:
        """The key for `token` (`Unauthenticated` for a key unknown, `JwksUnavailable`
        when the keys cannot be had)."""
        ...


class SharedSecret:
    """The HS* secret: one key for every token."""

    def __init__(self, secret: str) -> None:
        self._secret = secret

    def key_for(self, token: str) -> Any:
        return self._secret


class JwksKeys:
    """The identity provider's public keys, from its JWKS URL, chosen by the token's ``kid``."""

    def __init__(self, config: TokenSettings) -> None:
        assert config.jwks_url is not None
        self.url = config.jwks_url
        self._client = jwt.PyJWKClient(
            config.jwks_url,
            cache_jwk_set=True,
            lifespan=_JWKS_LIFESPAN_S,
            timeout=config.jwks_timeout_s,
            cooldown_duration=config.jwks_refresh_s,
        )

    def key_for(self, token: str) -> Any:
        try:
            kid = jwt.get_unverified_header(token).get("kid")
        except jwt.InvalidTokenError:
            raise Unauthenticated("the token is invalid") from None
        if not isinstance(kid, str) or not kid:
            raise Unauthenticated("the token names no signing key (kid)")
        try:
            # The set first (cached): failing here, the provider is at fault, not the token.
            self._client.get_signing_keys()
        except (jwt.PyJWKClientError, jwt.PyJWKSetError) as exc:
            raise JwksUnavailable(
                f"the identity provider's keys at {self.url} could not be fetched ({exc})",
                url=self.url,
            ) from exc
        try:
            return self._client.get_signing_key(kid)
        except jwt.PyJWKClientConnectionError as exc:
            raise JwksUnavailable(
                f"the identity provider's keys at {self.url} could not be fetched ({exc})",
                url=self.url,
            ) from exc
        except (jwt.PyJWKClientError, jwt.PyJWKSetError):
            # Not in the set even after a refetch: signed by a key the provider does not publish.
            raise Unauthenticated("the token is signed by an unknown key") from None


class TokenVerifier:
    """Checks a bearer token and says whose it is."""

    def __init__(self, config: TokenSettings, keys: SigningKeys | None = None) -> None:
        self.config = config
        if keys is None:
            keys = JwksKeys(config) if config.jwks_url else SharedSecret(config.shared_secret())
        self._keys = keys

    @classmethod
    def from_settings(cls, settings: Settings) -> TokenVerifier:
        """The verifier of the ``CHATLOG_AUTH_*`` settings (`ConfigError` with neither a
        secret nor a JWKS URL)."""
        return cls(TokenSettings.from_settings(settings))

    def verify(self, token: str) -> Principal:
        """The principal of `token`; `Unauthenticated` naming why it is refused."""
        if not token:
            raise Unauthenticated("no bearer token: send Authorization: Bearer <JWT>")
        config = self.config
        key = self._keys.key_for(token)
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                # The configured list: the token's own header never chooses outside it.
                algorithms=list(config.allowed),
                issuer=config.issuer,
                audience=config.audience,
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
        tenant = claims.get(config.tenant_claim, "default")
        try:
            return Principal(
                user_id=validate_id(claims["sub"], field="sub"),
                tenant=validate_id(tenant, field=config.tenant_claim),
            )
        except InvalidId as exc:
            raise Unauthenticated(
                f"the token's {exc.context.get('field')} is no valid id"
            ) from None


class TokenIssuer:
    """Mints HS* tokens the verifier of the same settings accepts (`chatlog token`).

    With a JWKS there is no secret to sign with: the identity provider mints the tokens.
    """

    def __init__(self, config: TokenSettings) -> None:
        if config.jwks_url is not None:
            raise ConfigError(
                "CHATLOG_AUTH_JWKS_URL is set: the gateway accepts only the identity "
                "provider's tokens, so chatlog cannot mint one; get one from the provider",
                setting="CHATLOG_AUTH_JWKS_URL",
            )
        self.config = config
        self._secret = config.shared_secret()

    @classmethod
    def from_settings(cls, settings: Settings) -> TokenIssuer:
        """The issuer of the ``CHATLOG_AUTH_*`` settings (`ConfigError` without a secret)."""
        return cls(TokenSettings.from_settings(settings))

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
            "iss": self.config.issuer,
            "aud": self.config.audience,
            "sub": user_id,
            self.config.tenant_claim: tenant,
            "iat": issued,
            "nbf": issued,
            "exp": issued + int(ttl_s),
            **claims,
        }
        return jwt.encode(payload, self._secret, algorithm=self.config.allowed[0])
