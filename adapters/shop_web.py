"""What the shop's two HTTP embeddings share (FastAPI and WSGI), with no web framework: who is acting, how
answers become JSON, and the statuses of the domain's errors.

Who is acting comes from a signed bearer token (a JWT, HS256): ``Authorization: Bearer <token>``, its ``sub`` the
customer id, ``"staff": true`` (or ``"role": "staff"``) for staff, ``exp`` required. The key is ``SHOP_JWT_KEY``
(or ``jwt_key=...``), at least 32 bytes. A request without a token is anonymous; a token that is forged,
expired or malformed is refused with 401. ``SHOP_TRUST_HEADERS=1`` (or ``trust_headers=True``) takes identity
from ``X-Customer-Id`` and ``X-Admin: 1`` instead, which anyone can send: for development only.

>>> key = "k" * 32
>>> resolve = identity(jwt_key=key)
>>> resolve({"authorization": f"Bearer {issue_token(key, 'c1')}"})
Principal(customer_id='c1', admin=False)
>>> resolve({"authorization": f"Bearer {issue_token('x' * 32, 'c1')}"})  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
mediator.AuthenticationError: The token's signature does not verify; send a valid credential: ...
>>> resolve({})
Principal(customer_id=None, admin=False)
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any

import attrs
import jwt
import structlog

from domain.errors import ConcurrencyConflict, NotFound, RuleViolation
from handlers.authorization import ANONYMOUS, Forbidden, Principal, SignInRequired
from mediator import AuthenticationError
from mediator.http import StatusMap

log = structlog.get_logger("shop.http")

STATUS_OF: StatusMap = {
    NotFound: (404, "not_found"),
    Forbidden: (403, "forbidden"),
    SignInRequired: (401, "unauthenticated"),
    ConcurrencyConflict: (409, "conflict"),
    RuleViolation: (409, "rule_violation"),
}
"""The domain's errors and how each answers over HTTP (an anonymous caller denied is asked to sign in: 401)."""

ALGORITHM = "HS256"
MIN_KEY_BYTES = 32
"""RFC 7518 wants an HS256 key at least as long as its hash: 256 bits."""


class IdentityConfigError(ValueError):
    """The shop's HTTP app was started with no way to tell who is acting, or with a key too short to trust."""


def principal_from_headers(headers: Mapping[str, str]) -> Principal:
    """Who is acting, taken on trust from the request's headers: ``X-Admin: 1`` for staff, ``X-Customer-Id``
    for a customer. Anyone can send these: development only (``SHOP_TRUST_HEADERS=1``)."""
    if headers.get("x-admin") == "1":
        return Principal(admin=True)
    customer = headers.get("x-customer-id")
    return Principal(customer_id=customer) if customer else ANONYMOUS


@attrs.frozen
class BearerTokens:
    """The principal resolver of signed bearer tokens (JWT, HS256 with ``key``): anonymous without a token,
    :class:`~mediator.AuthenticationError` for one that does not verify, else the customer (``sub``) or staff."""

    key: str = attrs.field(repr=False)
    leeway: float = 0.0
    """Seconds of clock skew allowed on ``exp`` (and ``nbf``, ``iat``)."""

    def __attrs_post_init__(self) -> None:
        if len(self.key.encode()) < MIN_KEY_BYTES:
            raise IdentityConfigError(f"The key that verifies the shop's tokens has {len(self.key.encode())} "
                                      f"bytes; use at least {MIN_KEY_BYTES} random bytes (SHOP_JWT_KEY).")

    def __call__(self, headers: Mapping[str, str]) -> Principal:
        value = headers.get("authorization")
        if value is None:
            return ANONYMOUS
        scheme, _, token = value.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthenticationError("The Authorization header is not a bearer token ('Bearer <token>')")
        try:
            claims = jwt.decode(token.strip(), self.key, algorithms=[ALGORITHM], leeway=self.leeway,
                                options={"require": ["exp", "sub"]})
        except jwt.ExpiredSignatureError as exc:
            raise AuthenticationError("The token has expired") from exc
        except jwt.InvalidSignatureError as exc:
            raise AuthenticationError("The token's signature does not verify") from exc
        except jwt.MissingRequiredClaimError as exc:
            raise AuthenticationError(f"The token has no {exc.claim!r} claim") from exc
        except jwt.DecodeError as exc:
            raise AuthenticationError("The token is malformed") from exc
        except jwt.InvalidTokenError as exc:
            raise AuthenticationError(f"The token is not valid ({type(exc).__name__})") from exc
        subject = claims["sub"]
        if not isinstance(subject, str) or not subject:
            raise AuthenticationError("The token's subject (sub) is not a customer id")
        if claims.get("staff") is True or claims.get("role") == "staff":
            return Principal(admin=True)
        return Principal(customer_id=subject)


def issue_token(key: str, subject: str, *, staff: bool = False, expires_in: dt.timedelta = dt.timedelta(hours=1),
                now: dt.datetime | None = None) -> str:
    """A token for ``subject`` (a customer id, or a staff member's id with ``staff=True``), signed with ``key``.

    The shop only verifies tokens; a real deployment gets them from its identity provider. This one is for tests,
    scripts and the examples.
    """
    issued = now or dt.datetime.now(dt.UTC)
    claims: dict[str, Any] = {"sub": subject, "iat": issued, "exp": issued + expires_in}
    if staff:
        claims["staff"] = True
    return jwt.encode(claims, key, algorithm=ALGORITHM)


def identity(*, jwt_key: str | None = None, trust_headers: bool | None = None,
             environ: Mapping[str, str] = os.environ) -> Callable[[Mapping[str, str]], Principal]:
    """The principal resolver the shop's HTTP apps run with: bearer tokens verified with ``jwt_key`` (else
    ``SHOP_JWT_KEY``), or, with ``trust_headers`` (else ``SHOP_TRUST_HEADERS=1``, when no ``jwt_key`` is given),
    identity taken on trust from headers, with a warning in the log.

    Raises:
        IdentityConfigError: when there is neither a key nor the development flag, or the key is too short.
    """
    if trust_headers is None:  # the arguments first, then the environment
        trust_headers = jwt_key is None and environ.get("SHOP_TRUST_HEADERS") == "1"
    if trust_headers:
        log.warning("identity taken from headers: development only", headers=["X-Customer-Id", "X-Admin"])
        return principal_from_headers
    key = jwt_key if jwt_key is not None else environ.get("SHOP_JWT_KEY")
    if not key:
        raise IdentityConfigError(
            "The shop's HTTP app needs the key that verifies its bearer tokens: set SHOP_JWT_KEY (at least "
            f"{MIN_KEY_BYTES} random bytes) or pass jwt_key=...; SHOP_TRUST_HEADERS=1 takes identity from "
            "X-Customer-Id and X-Admin headers instead, for development only.")
    return BearerTokens(key)


def data(value: Any) -> Any:
    """Answers (attrs classes, decimals, dates) as JSON-friendly data."""
    if attrs.has(type(value)):
        return {f.name: data(getattr(value, f.name)) for f in attrs.fields(type(value))}
    if isinstance(value, tuple | list):
        return [data(v) for v in value]
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, dt.date):
        return value.isoformat()
    return value
