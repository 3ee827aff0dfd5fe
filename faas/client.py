"""A small client of the management API and of function invocation, for the CLI."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator, Mapping, Sequence
from typing import IO, cast

import requests

from .errors import ApiError, FaasError

JSON = dict[str, object]
Rows = list[JSON]  # an alias: inside Client, `list` names the method


class Client:
    def __init__(self, url: str, token: str | None, timeout: float = 120) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.session = requests.Session()
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"

    def _call(self, method: str, path: str, **kwargs: object) -> requests.Response:
        url = f"{self.url}/api/v1{path}"
        try:
            response = self.session.request(method, url, timeout=self.timeout, **kwargs)  # type: ignore[arg-type]
        except requests.ConnectionError as exc:
            raise FaasError(
                f"cannot reach the faas API at {self.url} (is `faas up` running?)"
            ) from exc
        except requests.RequestException as exc:
            raise FaasError(f"request to {url} failed: {exc}") from exc
        if response.status_code >= 400:
            raise _api_error(response)
        return response

    def deploy(self, spec: Mapping[str, object]) -> JSON:
        name = spec["name"]
        return cast(JSON, self._call("PUT", f"/functions/{name}", json=spec).json())

    def list(self) -> list[JSON]:
        return cast(list[JSON], self._call("GET", "/functions").json())

    def get(self, name: str) -> JSON:
        return cast(JSON, self._call("GET", f"/functions/{name}").json())

    def scale(self, name: str, replicas: int) -> JSON:
        response = self._call("POST", f"/functions/{name}/scale", json={"replicas": replicas})
        return cast(JSON, response.json())

    def pause(self, name: str) -> JSON:
        return cast(JSON, self._call("POST", f"/functions/{name}/pause").json())

    def _events(self, response: requests.Response) -> Iterator[JSON]:
        try:
            for line in response.iter_lines():
                if line:
                    yield cast(JSON, json.loads(line))
        except requests.RequestException as exc:
            raise FaasError(f"the answer from {response.url} broke off: {exc}") from exc

    def pull(self, image: str, auth: dict[str, str] | None = None) -> Iterator[JSON]:
        body: JSON = {"image": image} if auth is None else {"image": image, "auth": auth}
        response = self._call("POST", "/images/pull", json=body, stream=True)
        return self._events(response)

    def load(self, archive: IO[bytes]) -> Sequence[str]:
        response = self._call("POST", "/images/load", data=archive)
        return cast(Sequence[str], response.json()["images"])

    def build(self, name: str, context: IO[bytes], template: bool = False) -> Iterator[JSON]:
        params = {"template": "1"} if template else {}
        response = self._call(
            "POST", f"/functions/{name}/build", data=context, params=params, stream=True
        )
        return self._events(response)

    def create_key(self, name: str, ttl: int | None) -> JSON:
        response = self._call("POST", f"/functions/{name}/keys", json={"ttl": ttl})
        return cast(JSON, response.json())

    def revoke_key(self, kid: str) -> None:
        self._call("DELETE", f"/keys/{kid}")

    def secrets(self) -> Rows:
        return cast(Rows, self._call("GET", "/secrets").json())

    def create_secret(self, name: str, value: bytes) -> JSON:
        body = {"name": name, "raw_value": base64.b64encode(value).decode()}
        return cast(JSON, self._call("POST", "/secrets", json=body).json())

    def update_secret(self, name: str, value: bytes) -> JSON:
        body = {"raw_value": base64.b64encode(value).decode()}
        return cast(JSON, self._call("PUT", f"/secrets/{name}", json=body).json())

    def remove_secret(self, name: str) -> None:
        self._call("DELETE", f"/secrets/{name}")

    def stats(self, name: str | None = None) -> Rows:
        params = {"name": name} if name else None
        return cast(Rows, self._call("GET", "/stats", params=params).json())

    def remove(self, name: str) -> None:
        self._call("DELETE", f"/functions/{name}")

    def logs(
        self, name: str, follow: bool, tail: int | None, since: int | None = None
    ) -> Iterator[bytes]:
        """`since`: a Unix timestamp; only lines logged from then on."""
        params: dict[str, str] = {"follow": str(follow).lower()}
        if tail is not None:
            params["tail"] = str(tail)
        if since is not None:
            params["since"] = str(since)
        response = self._call("GET", f"/functions/{name}/logs", params=params, stream=True)
        return response.iter_content(chunk_size=None)

    def calls(self, name: str, limit: int = 100) -> JSON:
        return cast(JSON, self._call("GET", f"/functions/{name}/calls?limit={limit}").json())

    def retry_call(self, call_id: str) -> JSON:
        return cast(JSON, self._call("POST", f"/calls/{call_id}/retry").json())

    def drop_call(self, call_id: str) -> None:
        self._call("DELETE", f"/calls/{call_id}")

    def invoke(
        self,
        name: str,
        path: str = "/",
        method: str = "GET",
        data: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> requests.Response:
        """Call the function through Traefik, as any HTTP client would (no admin token)."""
        url = f"{self.url}/function/{name}{path if path.startswith('/') else '/' + path}"
        try:
            return requests.request(
                method, url, data=data, headers=dict(headers or {}), timeout=self.timeout
            )
        except requests.RequestException as exc:
            raise FaasError(f"cannot reach {url}: {exc}") from exc


def _api_error(response: requests.Response) -> ApiError:
    try:
        body = response.json()
        message, detail = str(body["error"]), body.get("detail")
    except (ValueError, KeyError, TypeError):
        message, detail = response.text.strip()[:200] or response.reason, None
    return ApiError(response.status_code, message, detail)
