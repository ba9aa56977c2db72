"""The fleet port's one real adapter: the Cloud Run Admin API v2 over google-cloud-run, unmodified.

The rest of baseroll sees `ServiceView`, plain data; only this module touches run_v2 types.
"""
from __future__ import annotations

import functools
import threading
from typing import Any, Callable, Iterable, Iterator, Mapping
from urllib.parse import urlsplit

import grpc
from google.api_core import exceptions as gexc
from google.api_core import retry as gretry
from google.api_core.client_options import ClientOptions
from google.api_core.future import polling as gpolling
from google.auth.credentials import AnonymousCredentials
from google.cloud import run_v2
from google.cloud.run_v2.services.services.transports import ServicesGrpcTransport

from baseroll.fleet.view import (
    ALL_TO_LATEST,
    LATEST,
    REVISION,
    FleetError,
    ServiceView,
    StaleService,
    TrafficSplit,
    watched,
)

TRANSPORTS = ("grpc", "rest")
# A channel's states after which `check_reachable` knows the answer.
_SETTLED = frozenset({grpc.ChannelConnectivity.READY, grpc.ChannelConnectivity.TRANSIENT_FAILURE,
                      grpc.ChannelConnectivity.SHUTDOWN})
# As google-cloud-run's own channels: a page of 500 services can exceed gRPC's 4 MB default.
GRPC_CHANNEL_OPTIONS = (("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1))

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


_ALLOCATION = {run_v2.TrafficTargetAllocationType.TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST: LATEST,
               run_v2.TrafficTargetAllocationType.TRAFFIC_TARGET_ALLOCATION_TYPE_REVISION: REVISION}
_ALLOCATION_TYPE = {name: enum for enum, name in _ALLOCATION.items()}


def _target(t: TrafficSplit) -> run_v2.TrafficTarget:
    return run_v2.TrafficTarget(type_=_ALLOCATION_TYPE[t.type], percent=t.percent, revision=t.revision, tag=t.tag)


@functools.lru_cache(maxsize=None)
def _enum_names(descriptor: Any, field: str) -> dict[int, str]:
    return {v.number: v.name for v in descriptor.fields_by_name[field].enum_type.values}


def _enum_name(msg: object, field: str) -> str:
    # Looked up once per message type and field: listing reads several enums of each of 10,000 services.
    names = _enum_names(msg.DESCRIPTOR, field)  # type: ignore[attr-defined]
    value = getattr(msg, field)
    return names.get(value, str(value))


def _reason(cond: object) -> str:
    """The name of whichever of the condition's reasons is set (they are one `oneof`)."""
    which = cond.WhichOneof("reasons")  # type: ignore[attr-defined]
    return _enum_name(cond, which) if which else ""


def _split(t: object) -> TrafficSplit:
    # The raw protobuf's number finds its proto-plus enum member (an IntEnum) as the key.
    kind = _ALLOCATION.get(t.type_, str(t.type_))  # type: ignore[attr-defined]
    return TrafficSplit(kind, t.percent, t.revision, t.tag)  # type: ignore[attr-defined]


def terminal(pb: Any) -> dict[str, str]:
    """A resource's terminal condition as the view's fields (services, jobs and worker pools alike)."""
    tc = pb.terminal_condition if pb.HasField("terminal_condition") else None
    return {"terminal_state": _enum_name(tc, "state") if tc is not None and tc.state else "",
            "terminal_reason": _reason(tc) if tc is not None else "",
            "terminal_message": tc.message if tc is not None else ""}


def view(svc: run_v2.Service) -> ServiceView:
    # Read the raw protobuf under the proto-plus wrapper: going through the wrapper's field
    # marshalling was most of the time of listing 10,000 services.
    pb = run_v2.Service.pb(svc)
    containers = pb.template.containers
    return ServiceView(
        name=pb.name,
        images=tuple(c.image for c in containers),
        base_image_uris=tuple(c.base_image_uri for c in containers),
        labels=dict(pb.labels),
        annotations=dict(pb.annotations),
        etag=pb.etag,
        generation=pb.generation,
        observed_generation=pb.observed_generation,
        latest_ready_revision=pb.latest_ready_revision,
        latest_created_revision=pb.latest_created_revision,
        reconciling=pb.reconciling,
        # An empty `traffic` is 100 % to the latest ready revision (the field's docstring).
        traffic=tuple(_split(t) for t in pb.traffic) or ALL_TO_LATEST,
        traffic_statuses=tuple(_split(t) for t in pb.traffic_statuses),
        uri=pb.uri,
        **terminal(pb),
        tag_uris={t.tag: t.uri for t in pb.traffic_statuses if t.tag and t.uri},
        ingress=_enum_name(pb, "ingress") if pb.ingress else "",
    )


def make_client(client_cls: Any, grpc_transport: Any, endpoint: str | None, transport: str) -> Any:
    """A google-cloud-run client on Google's endpoint, or on `endpoint` (a URL; the local stand-in's
    is `http://`: plaintext, no credentials). gRPC is google-cloud-run's default and production's;
    `rest` stays selectable."""
    if transport not in TRANSPORTS:
        raise ValueError(f"Cloud Run transport must be one of {TRANSPORTS}, got {transport!r}")
    if not endpoint:
        return client_cls(transport=transport)
    if transport == "rest":
        return client_cls(credentials=AnonymousCredentials(), transport="rest",
                          client_options=ClientOptions(api_endpoint=endpoint))
    url = urlsplit(endpoint)
    if url.scheme != "http":
        return client_cls(transport="grpc", client_options=ClientOptions(api_endpoint=url.netloc))
    # A channel given to the transport is used as is: no TLS, no credentials.
    return client_cls(transport=grpc_transport(channel=grpc.insecure_channel(url.netloc, options=GRPC_CHANNEL_OPTIONS)))


class TemplateFleet:
    """What services, jobs and worker pools share: list, get, and update a template's images from a
    fresh read. Whether Cloud Run enforces the etag on update is not documented
    (docs/GOOGLE_APIS.md#cloud-run-admin-api-v2), so a write is based on a read just before it, not
    on the caller's view: a change the caller does not watch (a label) is kept, and one it does is
    never written over (StaleService)."""

    _view: Callable[[Any], ServiceView]
    _noun: str  # in errors: "service", "job", "worker pool"

    def _list(self, parent: str) -> Iterable[Any]:
        """The resources under `parent` (a pager over pages of 500)."""
        raise NotImplementedError

    def _fetch(self, name: str) -> Any:
        raise NotImplementedError

    def _containers(self, raw: Any) -> Any:
        raise NotImplementedError

    def _write(self, raw: Any, traffic: tuple[TrafficSplit, ...] | None, revision: str | None, retry: Any) -> Any:
        """Send the update (a revision name only when the containers change); return its operation."""
        raise NotImplementedError

    def list_services(self, project: str, region: str) -> Iterator[ServiceView]:
        for raw in self._list(f"projects/{project}/locations/{region}"):
            yield type(self)._view(raw)

    def _get(self, name: str) -> Any:
        try:
            return self._fetch(name)
        except gexc.NotFound as exc:
            raise FleetError(f"{self._noun} {name} not found") from exc

    def get_service(self, name: str) -> ServiceView:
        return type(self)._view(self._get(name))

    def update_images(
        self, current: ServiceView, images: Mapping[int, str], *, annotations: Mapping[str, str], timeout: float,
        base_uris: Mapping[int, str] = {}, traffic: tuple[TrafficSplit, ...] | None = None, revision: str = "",
    ) -> ServiceView:
        raw = self._get(current.name)
        indexes = {*images, *base_uris}
        if watched(type(self)._view(raw), indexes) != watched(current, indexes):
            raise StaleService(f"{current.name}: changed since it was read")
        containers = self._containers(raw)
        for index in indexes:
            if index >= len(containers):
                raise FleetError(f"{current.name} has no container #{index}")
        for index, image in images.items():
            containers[index].image = image
        for index, uri in base_uris.items():
            containers[index].base_image_uri = uri
        for key, value in annotations.items():
            raw.annotations[key] = value
        try:
            # Retries stay inside the caller's budget (an update and its gate fit one invocation).
            operation = self._write(raw, traffic, revision if indexes else None,
                                    WRITE_RETRY.with_timeout(max(timeout, 1.0)))
        except (gexc.Aborted, gexc.Conflict, gexc.FailedPrecondition) as exc:
            raise StaleService(f"{current.name}: {exc.message}") from exc
        except gexc.GoogleAPICallError as exc:
            raise FleetError(f"update of {current.name} failed: {exc}") from exc
        try:
            # The finished operation's response is the resource as the deploy left it.
            return type(self)._view(operation.result(timeout=timeout, retry=READ_RETRY, polling=OPERATION_POLLING))
        except (gexc.GoogleAPICallError, TimeoutError):
            pass  # a failed reconciliation, or still going: the conditions say which (the caller's gate decides)
        return self.get_service(current.name)


class CloudRunFleet(TemplateFleet):
    """Fleet over google-cloud-run's ServicesClient, used unmodified."""

    _view = staticmethod(view)
    _noun = "service"

    def __init__(self, client: run_v2.ServicesClient, endpoint: str = "") -> None:
        self._client = client
        self._endpoint = endpoint or client.api_endpoint  # as messages name it
        self._channel: grpc.Channel | None = getattr(client.transport, "grpc_channel", None)  # None over REST

    @classmethod
    def connect(cls, endpoint: str | None = None, transport: str = "grpc") -> CloudRunFleet:
        return cls(make_client(run_v2.ServicesClient, ServicesGrpcTransport, endpoint, transport), endpoint or "")

    def check_reachable(self, timeout_s: float) -> None:
        """Raise FleetError at once if the endpoint refuses the connection, or after `timeout_s` if it
        never connects. For interactive callers (the CLI): over gRPC an unreachable endpoint is
        UNAVAILABLE, which READ_RETRY retries for 120 s, right for a function riding out a blip but not
        for a person at a terminal (docs/GOOGLE_APIS.md#transports). REST needs no check: a refused
        connection is not an API error, so it is never retried."""
        channel = self._channel
        if channel is None:
            return
        settled = threading.Event()
        seen: list[grpc.ChannelConnectivity] = []

        def watch(state: grpc.ChannelConnectivity) -> None:
            seen.append(state)
            if state in _SETTLED:
                settled.set()

        channel.subscribe(watch, try_to_connect=True)
        try:
            settled.wait(timeout_s)
        finally:
            channel.unsubscribe(watch)
        state = seen[-1] if seen else grpc.ChannelConnectivity.IDLE
        if state is not grpc.ChannelConnectivity.READY:
            why = "connection failed" if settled.is_set() else f"not connected within {timeout_s:g} s"
            raise FleetError(f"cannot reach {self._endpoint} over gRPC ({why}): is cloud_run_endpoint in the "
                             "config right, and the server running (`make up` starts the local stack)?")

    def _list(self, parent: str) -> Iterable[run_v2.Service]:
        request = run_v2.ListServicesRequest(parent=parent, page_size=500)
        return self._client.list_services(request=request, retry=READ_RETRY)

    def _fetch(self, name: str) -> run_v2.Service:
        return self._client.get_service(name=name, retry=READ_RETRY)

    def _containers(self, raw: run_v2.Service) -> Any:
        return raw.template.containers

    def _write(self, raw: run_v2.Service, traffic: tuple[TrafficSplit, ...] | None, revision: str | None,
               retry: Any) -> Any:
        if revision is not None:
            # A named revision with a different config is refused (409): a new name, or Cloud Run's.
            raw.template.revision = revision
        if traffic is not None:
            raw.traffic = [_target(t) for t in traffic]
        return self._client.update_service(request=run_v2.UpdateServiceRequest(service=raw), retry=retry)
