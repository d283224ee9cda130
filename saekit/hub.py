"""Hub downloads that fail, in words: which repo, revision and file, and what to do.

transformers and sae-lens wrap huggingface_hub's errors in their own (an OSError that names
huggingface.co whatever HF_ENDPOINT is); `hub_error_message` reads the original error in the chain
and names the repo, revision and file it was about. `HubError` carries such a message; the CLI prints
it as one line (exit 2). Used by saekit.models (hub models) and saekit.sae (published SAEs).
"""

from __future__ import annotations

import os
import re
from typing import Iterator


class HubError(OSError):
    """A hub download failed; the message names the repo, revision and file and what to do."""


def hub_token() -> str | None:
    """HF_TOKEN when it is set and not empty, else None (huggingface_hub then uses a stored login, if any)."""
    return os.environ.get("HF_TOKEN") or None


# ---------------------------------------------------------------------------- hub errors, in words

_HUB_URL = re.compile(r"/api/(?P<api_type>models|datasets|spaces)/(?P<api_repo>.+?)(?:/(?:revision|tree|paths-info)/"
                      r"(?P<api_rev>[^/?]+).*)?$|^/(?:(?P<type>datasets|spaces)/)?(?P<repo>.+?)/resolve/"
                      r"(?P<rev>[^/]+)/(?P<file>[^?]+)")


def hub_url_parts(url: str, endpoint: str = "") -> dict[str, str]:
    """{repo_type, repo_id, revision, file} a hub URL names (the keys it names only); `endpoint`'s own
    path (a mirror served under a prefix) is not part of the repo id."""
    from urllib.parse import unquote, urlparse

    path, prefix = unquote(urlparse(url).path), urlparse(endpoint).path.rstrip("/")
    match = _HUB_URL.search(path.removeprefix(prefix) if prefix and path.startswith(prefix + "/") else path)
    if not match:
        return {}
    if match.group("api_type"):
        parts = {"repo_type": match.group("api_type")[:-1], "repo_id": match.group("api_repo"),
                 "revision": match.group("api_rev") or ""}
    else:
        parts = {"repo_type": (match.group("type") or "models")[:-1], "repo_id": match.group("repo"),
                 "revision": match.group("rev"), "file": match.group("file")}
    return {k: v for k, v in parts.items() if v}


def _error_chain(error: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__  # type: ignore[assignment]


def _request_url(error: BaseException) -> str:
    """The URL of the HTTP request an httpx or huggingface_hub error is about ('' when none is known)."""
    for holder in (getattr(error, "response", None), error):
        try:
            request = getattr(holder, "request", None)  # httpx raises RuntimeError when it was never set
        except RuntimeError:
            request = None
        if request is not None and getattr(request, "url", None):
            return str(request.url)
    return ""


_CONNECTION_ERRORS = ("ConnectError", "ConnectTimeout", "ReadError", "ReadTimeout", "RemoteProtocolError",
                      "NetworkError", "WriteError")
"""httpx's transport errors (huggingface_hub 2.x talks httpx2): the server went away or never answered."""


def _is_connection_error(error: BaseException) -> bool:
    return type(error).__module__.split(".")[0] in ("httpx", "httpx2") and type(error).__name__ in _CONNECTION_ERRORS


def hub_error_message(error: BaseException) -> str | None:
    """A one-paragraph account of a failed hub request somewhere in `error`'s chain (a huggingface_hub
    HTTP error, or the connection dropping), naming the repo, revision and file and what to do; None
    when the error is not about the hub. transformers and sae-lens wrap these errors in their own
    (an OSError that names huggingface.co whatever HF_ENDPOINT is); this reads the original."""
    from huggingface_hub import constants, errors

    endpoint = constants.ENDPOINT
    for cause in _error_chain(error):
        parts = hub_url_parts(_request_url(cause), endpoint)
        kind = parts.get("repo_type", "model")
        repo = f"hub {kind} repo {parts.get('repo_id') or getattr(cause, 'repo_id', None) or '?'!r}"
        at = f" at revision {parts['revision']!r}" if parts.get("revision") else ""
        if isinstance(cause, errors.GatedRepoError):
            return (f"{repo} is gated: accept its conditions on its hub page while logged in, then set HF_TOKEN "
                    f"to an access token of that account (export HF_TOKEN=hf_...) or run `hf auth login`")
        if isinstance(cause, errors.RepositoryNotFoundError):
            return (f"{repo} not found on {endpoint} (check the name; a private repo needs HF_TOKEN set to a "
                    f"token that can read it)")
        if isinstance(cause, errors.RevisionNotFoundError):
            return f"{repo} has no revision {parts.get('revision', '?')!r} (a branch, tag or commit of the repo)"
        if isinstance(cause, errors.RemoteEntryNotFoundError):
            return f"{repo} has no file {parts.get('file', '?')!r}{at}"
        if isinstance(cause, errors.OfflineModeIsEnabled):
            return (f"{cause}: the hub is switched off here (HF_HUB_OFFLINE=1, as `make` sets it); unset it, "
                    f"or use a local folder")
        if _is_connection_error(cause):
            what = f" while reading {parts['file']!r} of {repo}" if parts.get("file") else ""
            return (f"the hub at {endpoint} went away{what} ({type(cause).__name__}: {cause}); rerun the same "
                    f"command when it is back: the files that finished are kept in the local hub cache "
                    f"({constants.HF_HUB_CACHE}), so the rerun downloads only the rest")
    return None
