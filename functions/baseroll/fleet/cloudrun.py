"""The fleet port's one real adapter: the Cloud Run Admin API v2 over google-cloud-run, unmodified.

The rest of baseroll sees `ServiceView`, plain data; only this module touches run_v2 types.
"""
from __future__ import annotations

import threading
from typing import Iterator, Mapping
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


def _enum_name(msg: object, field: str) -> str:
    value = getattr(msg, field)
    return msg.DESCRIPTOR.fields_by_name[field].enum_type.values_by_number[value].name  # type: ignore[attr-defined]


def _reason(cond: object) -> str:
    """The name of whichever of the condition's reasons is set (they are one `oneof`)."""
    which = cond.WhichOneof("reasons")  # type: ignore[attr-defined]
    return _enum_name(cond, which) if which else ""


def _split(t: object) -> TrafficSplit:
    kind = _ALLOCATION.get(run_v2.TrafficTargetAllocationType(t.type_), str(t.type_))  # type: ignore[attr-defined]
    return TrafficSplit(kind, t.percent, t.revision, t.tag)  # type: ignore[attr-defined]


def view(svc: run_v2.Service) -> ServiceView:
    # Read the raw protobuf under the proto-plus wrapper: going through the wrapper's field
    # marshalling was most of the time of listing 10,000 services.
    pb = run_v2.Service.pb(svc)
    tc = pb.terminal_condition if pb.HasField("terminal_condition") else None
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
        terminal_state=_enum_name(tc, "state") if tc is not None and tc.state else "",
        terminal_reason=_reason(tc) if tc is not None else "",
        terminal_message=tc.message if tc is not None else "",
        reconciling=pb.reconciling,
        # An empty `traffic` is 100 % to the latest ready revision (the field's docstring).
        traffic=tuple(_split(t) for t in pb.traffic) or ALL_TO_LATEST,
        traffic_statuses=tuple(_split(t) for t in pb.traffic_statuses),
        uri=pb.uri,
        tag_uris={t.tag: t.uri for t in pb.traffic_statuses if t.tag and t.uri},
        ingress=_enum_name(pb, "ingress") if pb.ingress else "",
    )


class CloudRunFleet:
    """Fleet over google-cloud-run's ServicesClient, used unmodified."""

    def __init__(self, client: run_v2.ServicesClient, endpoint: str = "") -> None:
        self._client = client
        self._endpoint = endpoint or client.api_endpoint  # as messages name it
        self._channel: grpc.Channel | None = getattr(client.transport, "grpc_channel", None)  # None over REST

    def _for_update(self, current: ServiceView, indexes: set[int]) -> run_v2.Service:
        """The service as it is now, read just before the write; raises StaleService if what the
        caller watches changed since `current` was read. Whether Cloud Run enforces the etag on
        update is not documented (docs/GOOGLE_APIS.md#cloud-run-admin-api-v2), so the write is
        based on this read, not on `current`: a change the caller does not watch (a label) is kept,
        and one it does is never written over."""
        svc = self._get(current.name)
        if watched(view(svc), indexes) != watched(current, indexes):
            raise StaleService(f"{current.name}: changed since it was read")
        return svc

    @classmethod
    def connect(cls, endpoint: str | None = None, transport: str = "grpc") -> "CloudRunFleet":
        """Google's endpoint, or `endpoint` (a URL; the local stand-in's is `http://`: plaintext, no
        credentials). gRPC is google-cloud-run's default and production's; `rest` stays selectable."""
        if transport not in TRANSPORTS:
            raise ValueError(f"Cloud Run transport must be one of {TRANSPORTS}, got {transport!r}")
        if not endpoint:
            return cls(run_v2.ServicesClient(transport=transport))
        if transport == "rest":
            return cls(run_v2.ServicesClient(credentials=AnonymousCredentials(), transport="rest",
                                             client_options=ClientOptions(api_endpoint=endpoint)), endpoint)
        url = urlsplit(endpoint)
        if url.scheme != "http":
            return cls(run_v2.ServicesClient(transport="grpc", client_options=ClientOptions(api_endpoint=url.netloc)),
                       endpoint)
        # A channel given to the transport is used as is: no TLS, no credentials.
        channel = grpc.insecure_channel(url.netloc, options=GRPC_CHANNEL_OPTIONS)
        return cls(run_v2.ServicesClient(transport=ServicesGrpcTransport(channel=channel)), endpoint)

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

    def list_services(self, project: str, region: str) -> Iterator[ServiceView]:
        parent = f"projects/{project}/locations/{region}"
        pager = self._client.list_services(request=run_v2.ListServicesRequest(parent=parent, page_size=500), retry=READ_RETRY)
        for svc in pager:
            yield view(svc)

    def get_service(self, name: str) -> ServiceView:
        return view(self._get(name))

    def _get(self, name: str) -> run_v2.Service:
        try:
            return self._client.get_service(name=name, retry=READ_RETRY)
        except gexc.NotFound as exc:
            raise FleetError(f"service {name} not found") from exc

    def update_images(
        self, current: ServiceView, images: Mapping[int, str], *, annotations: Mapping[str, str], timeout: float,
        base_uris: Mapping[int, str] = {}, traffic: tuple[TrafficSplit, ...] | None = None, revision: str = "",
    ) -> ServiceView:
        svc = self._for_update(current, {*images, *base_uris})
        for index in {*images, *base_uris}:
            if index >= len(svc.template.containers):
                raise FleetError(f"{current.name} has no container #{index}")
        for index, image in images.items():
            svc.template.containers[index].image = image
        for index, uri in base_uris.items():
            svc.template.containers[index].base_image_uri = uri
        if images or base_uris:
            # A named revision with a different config is refused (409): a new name, or Cloud Run's.
            svc.template.revision = revision
        if traffic is not None:
            svc.traffic = [_target(t) for t in traffic]
        for key, value in annotations.items():
            svc.annotations[key] = value
        try:
            operation = self._client.update_service(
                # Retries stay inside the caller's budget (an update and its gate fit one invocation).
                request=run_v2.UpdateServiceRequest(service=svc), retry=WRITE_RETRY.with_timeout(max(timeout, 1.0))
            )
        except (gexc.Aborted, gexc.Conflict, gexc.FailedPrecondition) as exc:
            raise StaleService(f"{current.name}: {exc.message}") from exc
        except gexc.GoogleAPICallError as exc:
            raise FleetError(f"update of {current.name} failed: {exc}") from exc
        try:
            # The finished operation's response is the service as the deploy left it.
            return view(operation.result(timeout=timeout, retry=READ_RETRY, polling=OPERATION_POLLING))
        except gexc.GoogleAPICallError:
            pass  # A failed revision surfaces here; the service's conditions say why.
        except TimeoutError:
            pass  # Still reconciling: the caller's health gate decides.
        return self.get_service(current.name)
