"""The method verbs a capability token grants, and the default scope of a call.

Interface:
    VERBS                       get put list stat delete snapshot admin
    ALL = "all"                 every verb
    DEFAULT_NAMESPACE, DEFAULT_BRANCH
    normalise_methods("get,put" | [verbs]) -> [verbs]   checked against VERBS (+ "all")

Which RPC needs which verb is the server's business (`aifs_server.auth.METHOD_VERBS`); this is
what a token names, shared by `mint_token` and the CLI's `--methods`.
"""

from __future__ import annotations

from collections.abc import Iterable

VERBS = ("get", "put", "list", "stat", "delete", "snapshot", "admin")
ALL = "all"
DEFAULT_NAMESPACE = "default"
DEFAULT_BRANCH = "main"


def normalise_methods(methods: Iterable[str] | str) -> list[str]:
    """Verbs from "get,put" or a list of them: known verbs or "all", duplicates dropped;
    ValueError naming the valid verbs otherwise (shared by mint_token and the CLI)."""
    items = [methods] if isinstance(methods, str) else list(methods)
    out: list[str] = []
    for item in items:
        for m in item.split(","):
            m = m.strip()
            if not m:
                continue
            if m != ALL and m not in VERBS:
                raise ValueError(
                    f"unknown method verb {m!r}: use one or more of {', '.join(VERBS)} or 'all'")
            if m not in out:
                out.append(m)
    if not out:
        raise ValueError("a token needs at least one method verb (or 'all')")
    return out
