"""The one check of an ``Authorization: Bearer <secret>`` header, for the peer port and the tracker.

Pure: it takes the header and the expected secret and says why a request is refused (None when it
is not), naming the credential ("cluster token", "node secret") but never its value. Node identity
(HMAC tokens per node) and mTLS plug in here.
"""

from __future__ import annotations

import hmac


def bearer_refusal(header: str | None, expected: str, credential: str) -> str | None:
    """None if ``header`` presents ``expected`` as a bearer token, else why not."""
    if header is None:
        return f"missing 'Authorization: Bearer <{credential}>' header"
    scheme, _, presented = header.strip().partition(" ")
    presented = presented.strip()
    if scheme.lower() != "bearer" or not presented:
        return f"the Authorization header must be 'Bearer <{credential}>'"
    # Constant time, over bytes: compare_digest refuses non-ASCII str, and a header may hold any.
    if not hmac.compare_digest(presented.encode("utf-8", "surrogatepass"), expected.encode("utf-8")):
        return f"invalid {credential}"
    return None
