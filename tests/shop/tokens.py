"""Bearer tokens for the shop's HTTP tests, signed with the key the test apps verify them with."""

from __future__ import annotations

import datetime as dt

from adapters.shop_web import issue_token

KEY = "test-key-for-the-shop-0123456789abcdef"
"""The key the tests' apps verify tokens with (``jwt_key=KEY``); 38 bytes, over HS256's 32."""


def as_customer(customer_id: str, *, key: str = KEY,
                expires_in: dt.timedelta = dt.timedelta(hours=1)) -> dict[str, str]:
    """The headers of a request sent by ``customer_id``."""
    return {"Authorization": f"Bearer {issue_token(key, customer_id, expires_in=expires_in)}"}


def as_staff(staff_id: str = "staff-1", *, key: str = KEY) -> dict[str, str]:
    """The headers of a request sent by a member of staff."""
    return {"Authorization": f"Bearer {issue_token(key, staff_id, staff=True)}"}


ADMIN = as_staff()
"""A staff member's headers, valid for an hour: enough for any test."""
