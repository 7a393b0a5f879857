"""Gradual rollouts: a request for a route's name is answered by one of its variants.

    routes: {support: {variants: {smollm2-135m: 90, tickets-v2: 10}}}

The variant is picked by a stable hash of the OpenAI `user` field (and the route's name), so
one user keeps seeing one variant while the percentages stay put; a request without `user`
is assigned at random. The hash places each user at a point in [0, 100) and the variants
cover consecutive stretches in their listed order, so growing the last-listed variant
(10 -> 50 -> 100) only ever moves users onto it, never between the others.

Percentages change at run time (PUT /v1/routes/{name}, or a config reload) without a restart;
the server sends the chosen variant in the `x-tuneforge-variant` header and logs it.
"""

from __future__ import annotations

import hashlib
import random
import threading

from tuneforge.serve.config import RouteConfig


def position(route: str, user: str) -> float:
    """Where `user` falls in [0, 100) for `route`: uniform over users, fixed per (route, user)."""
    digest = hashlib.sha256(f"{route}\x00{user}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 * 100.0


class Rollout:
    def __init__(self, routes: dict[str, RouteConfig] | None = None):
        self._lock = threading.Lock()  # PUTs and SIGHUP reloads swap the table while requests read it
        self._routes: dict[str, dict[str, float]] = {}
        self.replace(routes or {})

    def names(self) -> list[str]:
        return list(self._routes)

    def __contains__(self, name: str) -> bool:
        return name in self._routes

    def table(self) -> dict[str, dict[str, float]]:
        with self._lock:
            return {name: dict(v) for name, v in self._routes.items()}

    def set(self, name: str, route: RouteConfig) -> None:
        with self._lock:
            self._routes[name] = dict(route.variants)

    def replace(self, routes: dict[str, RouteConfig]) -> None:
        with self._lock:
            self._routes = {name: dict(r.variants) for name, r in routes.items()}

    def pick(self, route: str, user: str | None) -> str:
        with self._lock:
            variants = self._routes[route]
        point = position(route, user) if user else random.random() * 100.0
        edge = 0.0
        chosen = None
        for name, pct in variants.items():
            if pct <= 0:
                continue
            chosen = name
            edge += pct
            if point < edge:
                return name
        return chosen  # float rounding at the top edge: the last variant with a share
