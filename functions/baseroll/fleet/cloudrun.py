"""The fleet port's one real adapter: the Cloud Run Admin API v2 over google-cloud-run, unmodified.

The rest of baseroll sees `ServiceView`, plain data; only this module touches run_v2 types.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Iterator, Mapping

from google.api_core import exceptions as gexc
from google.api_core import retry as gretry
from google.api_core.client_options import ClientOptions
from google.api_core.future import polling as gpolling
from google.auth.credentials import AnonymousCredentials
from google.cloud import run_v2

from baseroll.fleet.view import FleetError, ServiceView, StaleService

# Writes and reads alike are retried on the far side's flakiness and quota pushback.
TRANSIENT = gretry.if_exception_type(
    gexc.ServiceUnavailable, gexc.TooManyRequests, gexc.ResourceExhausted, gexc.InternalServerError,
    gexc.DeadlineExceeded,
)
READ_RETRY = gretry.Retry(predicate=TRANSIENT, initial=0.2, maximum=10.0, multiplier=2.0, timeout=120.0)
WRITE_RETRY = gretry.Retry(predicate=TRANSIENT, initial=1.0, maximum=30.0, multiplier=2.0, timeout=300.0)
# api-core's default first polls an operation after 1 s, then 2.5 s, 4.75 s...: a deploy that is
# ready at 2.1 s would be seen at 4.75 s, and every wave of a rollout waits for its slowest one.
OPERATION_POLLING = gpolling.DEFAULT_POLLING.with_delay(initial=0.25, maximum=5.0, multiplier=1.5)
READ_CACHE_SIZE = 512  # services read for an update; a worker updates what it has just read


def _reason(cond: run_v2.Condition) -> str:
    for attr in ("revision_reason", "execution_reason", "reason"):
        value = getattr(cond, attr, None)
        if value:
            return value.name if hasattr(value, "name") else str(value)
    return ""


def view(svc: run_v2.Service) -> ServiceView:
    tc = svc.terminal_condition
    return ServiceView(
        name=svc.name,
        images=tuple(c.image for c in svc.template.containers),
        base_image_uris=tuple(c.base_image_uri for c in svc.template.containers),
        labels=dict(svc.labels),
        annotations=dict(svc.annotations),
        etag=svc.etag,
        generation=svc.generation,
        observed_generation=svc.observed_generation,
        latest_ready_revision=svc.latest_ready_revision,
        latest_created_revision=svc.latest_created_revision,
        terminal_state=tc.state.name if tc and tc.state else "",
        terminal_reason=_reason(tc) if tc else "",
        terminal_message=tc.message if tc else "",
        reconciling=svc.reconciling,
    )


class CloudRunFleet:
    """Fleet over google-cloud-run's ServicesClient, used unmodified."""

    def __init__(self, client: run_v2.ServicesClient) -> None:
        self._client = client
        # name -> (etag, serialized Service) of the latest read, so an update based on a view just
        # read does not read the service again (the update's etag precondition guards staleness).
        self._read: OrderedDict[str, tuple[str, bytes]] = OrderedDict()
        self._read_lock = threading.Lock()

    def _remember(self, svc: run_v2.Service) -> ServiceView:
        with self._read_lock:
            self._read[svc.name] = (svc.etag, run_v2.Service.serialize(svc))
            self._read.move_to_end(svc.name)
            while len(self._read) > READ_CACHE_SIZE:
                self._read.popitem(last=False)
        return view(svc)

    def _for_update(self, current: ServiceView) -> run_v2.Service:
        """A fresh copy of `current` as the API returned it; raises StaleService if it changed."""
        with self._read_lock:
            etag, raw = self._read.get(current.name, ("", b""))
        if raw and etag == current.etag:
            return run_v2.Service.deserialize(raw)
        svc = self._get(current.name)
        if svc.etag != current.etag:
            raise StaleService(current.name)
        return svc

    @classmethod
    def connect(cls, endpoint: str | None = None) -> "CloudRunFleet":
        if endpoint:
            # Local stand-in: plain HTTP REST, no credentials.
            client = run_v2.ServicesClient(
                credentials=AnonymousCredentials(),
                transport="rest",
                client_options=ClientOptions(api_endpoint=endpoint),
            )
        else:
            client = run_v2.ServicesClient()
        return cls(client)

    def list_services(self, project: str, region: str) -> Iterator[ServiceView]:
        parent = f"projects/{project}/locations/{region}"
        pager = self._client.list_services(request=run_v2.ListServicesRequest(parent=parent, page_size=500), retry=READ_RETRY)
        for svc in pager:
            yield view(svc)

    def get_service(self, name: str) -> ServiceView:
        return self._remember(self._get(name))

    def _get(self, name: str) -> run_v2.Service:
        try:
            return self._client.get_service(name=name, retry=READ_RETRY)
        except gexc.NotFound as exc:
            raise FleetError(f"service {name} not found") from exc

    def update_images(
        self, current: ServiceView, images: Mapping[int, str], *, annotations: Mapping[str, str], timeout: float,
        base_uris: Mapping[int, str] = {},
    ) -> ServiceView:
        svc = self._for_update(current)
        for index in {*images, *base_uris}:
            if index >= len(svc.template.containers):
                raise FleetError(f"{current.name} has no container #{index}")
        for index, image in images.items():
            svc.template.containers[index].image = image
        for index, uri in base_uris.items():
            svc.template.containers[index].base_image_uri = uri
        # A named revision with a different config is refused (409): let Cloud Run name it.
        svc.template.revision = ""
        for key, value in annotations.items():
            svc.annotations[key] = value
        try:
            operation = self._client.update_service(
                request=run_v2.UpdateServiceRequest(service=svc), retry=WRITE_RETRY
            )
        except (gexc.Aborted, gexc.Conflict, gexc.FailedPrecondition) as exc:
            raise StaleService(f"{current.name}: {exc.message}") from exc
        except gexc.GoogleAPICallError as exc:
            raise FleetError(f"update of {current.name} failed: {exc}") from exc
        try:
            # The finished operation's response is the service as the deploy left it.
            return self._remember(operation.result(timeout=timeout, retry=READ_RETRY, polling=OPERATION_POLLING))
        except gexc.GoogleAPICallError:
            pass  # A failed revision surfaces here; the service's conditions say why.
        except TimeoutError:
            pass  # Still reconciling: the caller's health gate decides.
        return self.get_service(current.name)
