"""Services of the Cloud Run stand-in: create, update, get, list, delete and their validation, typed (no
wire format): both fronts call these with request fields and get snapshots of protobuf messages back."""
from __future__ import annotations

import threading
import uuid

from google.cloud import run_v2
from google.longrunning import operations_pb2
from google.protobuf import field_mask_pb2

from .checks import check_containers, check_etag, check_keys, names_page
from .common import (
    BY_REVISION,
    LATEST,
    MAX_SERVICES_PER_REGION,
    REVISION_NAME,
    SERVICE_ID,
    SERVICE_MUTABLE,
    ApiError,
    ServiceRecord,
    config_key,
    copy,
    images_of,
    not_found,
    now,
    parts,
    service_uri,
    spec_key,
    template_key,
)

Operation = operations_pb2.Operation


class ServicesMixin:
    """The services half of `CloudRunStandin`'s state; the deploy half is `DeploysMixin`."""

    _lock: threading.RLock
    _services: dict[str, ServiceRecord]
    proxy_base: str  # where the loopback proxy serves service and tag URLs (`standin`)

    # -- validation --

    def _validate_spec(self, svc: run_v2.Service, sid: str, rec: ServiceRecord | None, new_revision: str | None) -> None:
        check_keys((("labels", svc.labels), ("annotations", svc.annotations),
                    ("template.labels", svc.template.labels), ("template.annotations", svc.template.annotations)))
        check_containers(svc.template.containers, "template.containers")
        revision = svc.template.revision
        if revision and (not REVISION_NAME.match(revision) or not revision.startswith(sid + "-")):
            raise ApiError(400, f"template.revision '{revision}' must start with '{sid}-' and be a valid name.")
        self._validate_traffic(svc, rec, new_revision)

    @staticmethod
    def _validate_traffic(svc: run_v2.Service, rec: ServiceRecord | None, new_revision: str | None) -> None:
        known = set(rec.revisions) if rec else set()
        if new_revision:
            known.add(new_revision)
        total = 0
        for i, t in enumerate(svc.traffic):
            if t.type_ == BY_REVISION:
                if t.revision not in known:
                    raise ApiError(400, f"traffic[{i}]: revision '{t.revision}' does not exist.")
            elif t.type_ != LATEST:
                raise ApiError(400, f"traffic[{i}].type must be set.")
            if not 0 <= t.percent <= 100:
                raise ApiError(400, f"traffic[{i}].percent must be within [0, 100].")
            total += t.percent
        if total != 100:
            raise ApiError(400, f"traffic percentages must add up to 100, got {total}.")

    # -- services --

    def create_service_op(self, project: str, location: str, sid: str, body: run_v2.Service, validate_only: bool) -> Operation:
        if not SERVICE_ID.match(sid):
            raise ApiError(400, f"serviceId '{sid}' must match {SERVICE_ID.pattern}.")
        name = f"projects/{project}/locations/{location}/services/{sid}"
        with self._lock:
            if name in self._services:
                raise ApiError(409, f"Resource '{sid}' already exists.", "ALREADY_EXISTS")
            in_region = sum(1 for n in self._services if n.startswith(f"projects/{project}/locations/{location}/"))
            if in_region >= MAX_SERVICES_PER_REGION:
                raise ApiError(400, f"At most {MAX_SERVICES_PER_REGION} services per region.", "FAILED_PRECONDITION")
            return self._create_locked(name, body, validate_only)

    def _create_locked(self, name: str, body: run_v2.Service, validate_only: bool) -> Operation:
        project, location, sid = parts(name)
        svc = run_v2.Service()
        field_mask_pb2.FieldMask(paths=list(SERVICE_MUTABLE)).MergeMessage(
            run_v2.Service.pb(body), run_v2.Service.pb(svc), replace_message_field=True, replace_repeated_field=True
        )
        if not svc.traffic:
            svc.traffic = [run_v2.TrafficTarget(type_=LATEST, percent=100)]
        rev_name = svc.template.revision or None
        self._validate_spec(svc, sid, None, rev_name)
        svc.name = name
        if validate_only:
            return self._done_op(name, svc)
        created = now()
        svc.uid = str(uuid.uuid4())
        svc.generation = 1
        svc.create_time = created
        svc.update_time = created
        svc.etag = self._etag()
        # Served by the stand-in's loopback proxy; Cloud Run's is https://<service>-<hash>.<region>.run.app
        # (docs/GOOGLE_APIS.md#verify-at-zero-traffic).
        svc.uri = service_uri(self.proxy_base, project, location, sid)
        svc.urls = [svc.uri]
        rec = ServiceRecord(service=svc)
        self._reserve_slot()
        self._services[name] = rec
        self._service_stats(name).creates += 1
        rev = self._new_revision_locked(rec, rev_name or self._revision_name(rec, sid, 1), created)
        return self._start_deploy_locked(rec, rev.revision.name.rsplit("/", 1)[1])

    def update_service_op(
        self, project: str, location: str, sid: str, body: run_v2.Service, mask: list[str] | None, *,
        validate_only: bool, allow_missing: bool,
    ) -> Operation:
        name = f"projects/{project}/locations/{location}/services/{sid}"
        with self._lock:
            rec = self._services.get(name)
            if rec is None:
                if not allow_missing:
                    raise not_found("SERVICE", sid, project, location)
                return self._create_locked(name, body, validate_only)
            check_etag(body.etag, rec.service.etag, sid)
            return self._update_locked(rec, body, mask, validate_only)

    def _update_locked(self, rec: ServiceRecord, body: run_v2.Service, mask: list[str] | None, validate_only: bool) -> Operation:
        old = rec.service
        _, _, sid = parts(old.name)
        new = copy(old)
        paths = mask if mask is not None else list(SERVICE_MUTABLE)
        field_mask_pb2.FieldMask(paths=paths).MergeMessage(
            run_v2.Service.pb(body), run_v2.Service.pb(new), replace_message_field=True, replace_repeated_field=True
        )
        if not new.traffic:
            new.traffic = [run_v2.TrafficTarget(type_=LATEST, percent=100)]
        template_changed = template_key(new.template) != template_key(old.template)
        spec_changed = spec_key(new) != spec_key(old)
        rev_name = None
        if template_changed:
            rev_name = new.template.revision or None
            if rev_name and rev_name in rec.revisions:
                same = rec.revisions[rev_name].config_key == config_key(new.template)
                what = "this name" if same else "different configuration"
                raise ApiError(409, f"Revision named '{rev_name}' with {what} already exists.", "ALREADY_EXISTS")
        self._validate_spec(new, sid, rec, rev_name)
        if validate_only:
            return self._done_op(old.name, new)
        self._reserve_slot()
        updated = now()
        new.generation = old.generation + (1 if spec_changed else 0)
        new.update_time = updated
        new.etag = self._etag()  # every accepted write changes the etag
        rec.service = new
        if spec_changed:
            stats = self._service_stats(new.name)
            stats.updates += 1
            old_images = images_of(old)
            stats.images.extend(img for i, img in enumerate(images_of(new)) if i >= len(old_images) or old_images[i] != img)
        if template_changed:
            rev = self._new_revision_locked(rec, rev_name or self._revision_name(rec, sid, new.generation), updated)
            return self._start_deploy_locked(rec, rev.revision.name.rsplit("/", 1)[1])
        return self._start_deploy_locked(rec, None)

    def service_snapshot(self, project: str, location: str, sid: str) -> run_v2.Service:
        with self._lock:
            return copy(self._record(project, location, sid).service)

    def services_page(self, project: str, location: str, size: int, token: str) -> run_v2.ListServicesResponse:
        """One page, by name; the token is the last name returned. The response's messages are copies made
        under the lock (deploys change services in place), so each front serialises them at leisure."""
        pb = run_v2.ListServicesResponse.pb()()
        with self._lock:
            names, pb.next_page_token = names_page(self._services, project, location, "services", size, token)
            pb.services.extend(run_v2.Service.pb(self._services[n].service) for n in names)
        return run_v2.ListServicesResponse.wrap(pb)

    def delete_service_op(self, project: str, location: str, sid: str, etag: str, validate_only: bool) -> Operation:
        with self._lock:
            rec = self._record(project, location, sid)
            check_etag(etag, rec.service.etag, sid)
            snapshot = copy(rec.service)
            if not validate_only:
                del self._services[snapshot.name]
                snapshot.delete_time = now()
            return self._done_op(snapshot.name, snapshot, remember=not validate_only)

    def _record(self, project: str, location: str, sid: str) -> ServiceRecord:
        rec = self._services.get(f"projects/{project}/locations/{location}/services/{sid}")
        if rec is None:
            raise not_found("SERVICE", sid, project, location)
        return rec
