"""A small HTTP client for the jobs API, for `tuneforge jobs list|show|events|cancel`.

    api = JobsClient("http://127.0.0.1:8000/v1", api_key="sk-local")
    api.get("/fine_tuning/jobs", limit=10)["data"]

It speaks the same HTTP API as the `openai` package (which tuneforge does not need at run
time), with the standard library only. Every failure is a TuneforgeError with a stable code:
jobs_unreachable (no server at the URL), jobs_auth (401), the server's own error code
(job_not_found, invalid_job_state, ...) otherwise.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from tuneforge.errors import Problem, TuneforgeError

DEFAULT_URL = "http://127.0.0.1:8000/v1"
TIMEOUT_S = 60.0


class JobsClient:
    def __init__(self, base_url: str = DEFAULT_URL, api_key: str | None = None):
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key

    def get(self, path: str, **query: Any) -> dict[str, Any]:
        params = {k: v for k, v in query.items() if v is not None}
        return self._call("GET", path + (f"?{urllib.parse.urlencode(params)}" if params else ""))

    def post(self, path: str) -> dict[str, Any]:
        return self._call("POST", path)

    def _call(self, method: str, path: str) -> dict[str, Any]:
        url = self.base_url + path
        headers = {"Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(url, method=method, headers=headers, data=b"" if method == "POST" else None)
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            raise _api_error(exc, url) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise TuneforgeError(Problem("jobs_unreachable", f"cannot reach the server at {self.base_url} ({reason}); "
                                         "start it with `tuneforge serve` or pass --base-url", "--base-url")) from None
        except ValueError:
            raise TuneforgeError(Problem("jobs_bad_answer", f"{url} did not answer with JSON; is --base-url a "
                                         "tuneforge server's /v1?", "--base-url")) from None


def _api_error(exc: urllib.error.HTTPError, url: str) -> TuneforgeError:
    try:
        error = json.loads(exc.read())["error"]
        code, message = error.get("code") or f"http_{exc.code}", error.get("message") or str(exc)
    except (ValueError, KeyError, TypeError):
        code, message = f"http_{exc.code}", f"{url} answered {exc.code} {exc.reason}"
    if exc.code == 401:
        return TuneforgeError(Problem("jobs_auth", f"{message} (pass --api-key or set $TUNEFORGE_API_KEY)", "--api-key"))
    if exc.code == 404 and code == "unknown_url":
        return TuneforgeError(Problem("jobs_not_served", "this server has no jobs API (started with "
                                      "jobs.enabled: false, or not a tuneforge server)", "--base-url"))
    return TuneforgeError(Problem(code, message))
