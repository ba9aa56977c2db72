"""Registry-side rebase: fetch what the pure ``rebase`` needs, then mount, upload and push.

Only manifests and configs are downloaded. The new base's layers reach the target repository by
cross-repository mount; the new config is the only blob uploaded; manifests are pushed last
(children before their index), so a failure leaves no manifest pointing at missing blobs. A base on
another registry host than the target is the exception: where that registry cannot mount from the
other host, each missing layer is streamed through this process, and the result reports the bytes.
Re-running with the same inputs yields the same digest and, after the reads, costs one HEAD.

A rebase is a handful of small round trips, so its cost is their sequential depth: independent
calls go out together, on one process-wide thread pool.
"""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, Callable

from baseroll import log
from baseroll.images import image as image_model
from baseroll.images import oci
from baseroll.images.rebase import (
    ImageParts,
    RebaseError,
    RebaseOutput,
    child_descriptor,
    rebase,
    rebuild_index,
)
from baseroll.images.refs import ImageRef
from baseroll.images.registry import Manifest, RegistryClient, RegistryError

DEFAULT_DRIFT_POLICY = "apply-or-refuse"
POOL_WORKERS = 32


@dataclass(frozen=True)
class RebaseResult:
    digest: str
    ref: ImageRef  # target repository pinned by the new digest
    media_type: str
    platforms: tuple[str, ...]
    mounted_layers: int  # blobs mounted (201, whether or not the target had them) or copied by this run
    warnings: tuple[str, ...] = ()
    pushed: bool = False  # False for dry runs and when the manifest was already there
    copied_bytes: int = 0  # layer bytes streamed through this process (a base on another host)


@dataclass
class _Child:
    """One rebased platform, ready to push."""

    platform: str
    output: RebaseOutput
    n_new_base_layers: int
    app_layers: frozenset[str]  # layer digests of the original, which its repository holds
    descriptor: dict[str, Any] | None = None  # its entry in the original index, if any


@dataclass
class _Context:
    client: RegistryClient
    app: ImageRef
    old_base: ImageRef
    new_base: ImageRef
    old_top: Manifest
    new_top: Manifest
    drift_policy: str
    configs: dict[str, dict[str, Any]]  # by digest, filled from several threads


def rebase_image(
    client: RegistryClient,
    app: ImageRef,
    old_base: ImageRef,
    new_base: ImageRef,
    *,
    target: ImageRef | None = None,
    platform: str | None = None,
    dry_run: bool = False,
    drift_policy: str = DEFAULT_DRIFT_POLICY,
) -> RebaseResult:
    """Rebase ``app`` from ``old_base`` onto ``new_base`` and push the result.

    The result goes to ``target``'s repository (default: the app's own), by digest only unless
    ``target`` carries a tag. A multi-platform app is rebased child by child against the same
    platform of each base (each base may be an index or a single manifest); a platform missing from
    a base is a RebaseError naming it, never a fallback to another platform. Attestation children
    (BuildKit ``unknown/unknown``, ``vnd.docker.reference.type: attestation-manifest``) are dropped
    with a warning: they attest the old child's digest, so keeping them would attach false
    provenance to the new image. With ``platform`` ("linux/amd64"), only that platform is rebased
    and the result is a single-platform manifest.
    """
    dest = target or ImageRef(app.registry, app.repository)
    want = oci.Platform.parse(platform) if platform else None
    ctx, app_m = _read(client, app, old_base, new_base, drift_policy)
    warnings: list[str] = []
    if app_m.is_index:
        children = _rebase_index_children(ctx, app_m, want, warnings)
    else:
        children = [_rebase_one(ctx, app_m, want)]
    for c in children:
        warnings.extend(f"{c.platform}: {w}" for w in c.output.warnings)
    is_index = app_m.is_index and want is None
    top_raw, top_type = _top(app_m, children) if is_index else (children[0].output.manifest,
                                                                  children[0].output.media_type)
    digest = oci.sha256_digest(top_raw)
    mounted, copied, pushed = 0, 0, False
    if not dry_run:
        tag = target.tag if target is not None else None
        mounted, copied, pushed = _push(ctx, dest, tag, children, is_index, top_raw, top_type)
    result = RebaseResult(digest=digest, ref=dest.with_digest(digest), media_type=top_type,
                          platforms=tuple(c.platform for c in children), mounted_layers=mounted,
                          warnings=tuple(warnings), pushed=pushed, copied_bytes=copied)
    log.emit("rebase.done", "WARNING" if copied else "INFO", app=str(ctx.app), old_base=str(old_base),
             new_base=str(new_base), result=str(result.ref), platforms=list(result.platforms), mounted=mounted,
             copied_bytes=copied, pushed=pushed, dry_run=dry_run, warnings=list(result.warnings))
    return result


# ---------------------------------------------------------------- planning (reads only)


def _read(client: RegistryClient, app: ImageRef, old_base: ImageRef, new_base: ImageRef,
          drift_policy: str) -> tuple[_Context, Manifest]:
    """The three top manifests, read together; a single-platform one's config follows at once."""
    configs: dict[str, dict[str, Any]] = {}

    def read(ref: ImageRef) -> Manifest:
        m = client.get_manifest(ref)
        if not m.is_index:  # its config next, without waiting for the other two manifests
            _config(client, configs, ref, m)
        return m

    app_m, old_top, new_top = _parallel([lambda: read(app), lambda: read(old_base), lambda: read(new_base)])
    ctx = _Context(client, app.with_digest(app_m.digest), old_base, new_base, old_top, new_top, drift_policy, configs)
    return ctx, app_m


def _top(index: Manifest, children: list[_Child]) -> tuple[bytes, str]:
    """The rebased index: the original's, listing the rebased children with their original entries."""
    descriptors = [child_descriptor(c.descriptor or {}, c.output.manifest, c.output.media_type) for c in children]
    return rebuild_index(index.data, descriptors), index.media_type


def _rebase_index_children(ctx: _Context, index: Manifest, want: oci.Platform | None,
                           warnings: list[str]) -> list[_Child]:
    chosen: list[tuple[dict[str, Any], oci.Platform | None]] = []
    for desc in index.data["manifests"]:
        if oci.is_attestation(desc):
            warnings.append(f"dropped attestation manifest {desc['digest']}: it attests the old image")
            continue
        desc_platform = oci.Platform.from_dict(desc.get("platform"))
        if want is not None and (desc_platform is None or not desc_platform.matches(want)):
            continue
        chosen.append((desc, desc_platform))
    if not chosen:
        raise RebaseError(f"original {ctx.app} has no {want or 'image'} manifest to rebase")

    def one(desc: dict[str, Any], desc_platform: oci.Platform | None) -> _Child:
        child_m = ctx.client.get_manifest(ctx.app.with_digest(desc["digest"]))
        if child_m.is_index:
            raise RebaseError(f"original {ctx.app}: nested index {desc['digest']} is not supported")
        try:
            child = _rebase_one(ctx, child_m, desc_platform)
        except RebaseError as e:  # which of the platforms was refused, for a multi-platform app
            raise RebaseError(f"{desc_platform or desc['digest']}: {e}") from None
        child.descriptor = desc
        return child

    # Platforms are independent: each reads its own chain (child, its config, the bases' children).
    return _parallel([lambda d=d, p=p: one(d, p) for d, p in chosen])


def _rebase_one(ctx: _Context, app_m: Manifest, want: oci.Platform | None) -> _Child:
    if app_m.is_index:
        raise RebaseError(f"{ctx.app}: expected a manifest, got an index")
    o_cfg = _config(ctx.client, ctx.configs, ctx.app, app_m)
    plat = oci.config_platform(o_cfg)
    if plat is None:
        raise RebaseError(f"original {ctx.app}: config has no os/architecture")
    if want is not None and not plat.matches(want):
        raise RebaseError(f"original {ctx.app} is {plat}, not {want}")
    b_ref, b_m = _for_platform(ctx, ctx.old_base, ctx.old_top, plat, "old base")
    n_ref, n_m = _for_platform(ctx, ctx.new_base, ctx.new_top, plat, "new base")
    output = rebase(
        ImageParts(app_m.data, app_m.media_type, o_cfg),
        ImageParts(b_m.data, b_m.media_type, _config(ctx.client, ctx.configs, b_ref, b_m)),
        ImageParts(n_m.data, n_m.media_type, _config(ctx.client, ctx.configs, n_ref, n_m)),
        new_base_name=str(ImageRef(ctx.new_base.registry, ctx.new_base.repository, ctx.new_base.tag)),
        # The digest the new base reference resolves to (its index when multi-platform): what its tag
        # points at, so a later check "is this app on the current base?" compares like with like.
        new_base_digest=ctx.new_top.digest,
        drift_policy=ctx.drift_policy,
    )
    if not oci.load_json(output.manifest, max_bytes=len(output.manifest), what="manifest")["layers"]:
        # Registries have refused manifests without layers (docs/OCI.md#image-spec, "Empty descriptor").
        raise RebaseError(f"{ctx.app} ({plat}): the rebased image would have no layers")
    return _Child(str(plat), output, len(n_m.data["layers"]), frozenset(d["digest"] for d in app_m.data["layers"]))


def _for_platform(ctx: _Context, ref: ImageRef, top: Manifest, plat: oci.Platform,
                  label: str) -> tuple[ImageRef, Manifest]:
    """The base's manifest for ``plat``; a single-platform base is checked by ``rebase`` itself."""
    try:
        return ref, image_model.platform_manifest(ctx.client, ref, top, plat)
    except image_model.PlatformMissing as e:
        raise RebaseError(f"{label} {e}") from None


def _config(client: RegistryClient, configs: dict[str, dict[str, Any]], repo: ImageRef, m: Manifest) -> dict[str, Any]:
    digest = m.data["config"]["digest"]
    if digest not in configs:
        raw = client.get_blob(repo, digest, max_bytes=oci.MAX_CONFIG_BYTES)
        try:
            configs[digest] = oci.parse_config(raw)
        except oci.OCIError as e:
            raise RebaseError(f"{repo.name}@{m.digest}: {e}") from None
    return configs[digest]


# ---------------------------------------------------------------- pushing


def _push(ctx: _Context, dest: ImageRef, tag: str | None, children: list[_Child], is_index: bool,
          top_raw: bytes, top_type: str) -> tuple[int, int, bool]:
    """Make the result exist in ``dest``; (blobs mounted or copied, bytes copied, whether a manifest was written).

    One HEAD first: registries refuse a manifest whose blobs or children are missing, so one that is
    there already (a re-run) needs nothing more. Otherwise every child's blobs go together, then the
    children of an index, then the top manifest: never a manifest before what it points at.
    """
    client = ctx.client
    digest = oci.sha256_digest(top_raw)
    if client.head_manifest(dest.with_digest(digest)) == digest:
        return 0, 0, tag is not None and _push_manifest(client, dest.with_tag(tag), top_raw, top_type)
    mounted, copied = _push_blobs(ctx, dest, children)
    if is_index:
        _parallel([lambda c=c: client.put_manifest(dest.with_digest(c.output.manifest_digest), c.output.manifest,
                                                   c.output.media_type) for c in children])
    # By tag when there is one: the registry then serves it by digest too.
    client.put_manifest(dest.with_tag(tag) if tag else dest.with_digest(digest), top_raw, top_type)
    return mounted, copied, True


def _push_blobs(ctx: _Context, dest: ImageRef, children: list[_Child]) -> tuple[int, int]:
    """Mount the new base's layers (and the app's, when the target is another repo), upload the configs.

    Blobs the original's own manifest lists are in its repository already (the registry checked when
    it was pushed), so into that repository they are not mounted again.
    """
    client = ctx.client
    same_repo = (dest.registry, dest.repository) == (ctx.app.registry, ctx.app.repository)
    sources: dict[str, ImageRef] = {}
    for child in children:
        for d in child.output.base_layers:
            if not (same_repo and d["digest"] in child.app_layers):
                sources.setdefault(d["digest"], ctx.new_base)
        if not same_repo:
            rebased = oci.load_json(child.output.manifest, max_bytes=len(child.output.manifest), what="manifest")
            for d in rebased["layers"][child.n_new_base_layers:]:
                sources.setdefault(d["digest"], ctx.app)
    configs = list(dict.fromkeys(c.output.config for c in children))

    def mount(digest: str, source: ImageRef) -> tuple[int, int]:
        try:
            outcome, copied = client.transfer_blob(dest, digest, source)
            return outcome != "exists", copied
        except RegistryError as e:
            raise RegistryError(f"layer {digest} cannot be made present in {dest.name}: {e}", e.status, e.code) from e

    # Configs first: an upload can take two round trips (POST, PUT), a mount takes one.
    results = _parallel([lambda cfg=cfg: client.put_blob(dest, cfg) for cfg in configs]
                        + [lambda d=d, src=src: mount(d, src) for d, src in sources.items()])
    transfers = results[len(configs):]
    return sum(n for n, _ in transfers), sum(b for _, b in transfers)


_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _parallel(calls: list[Callable[[], Any]]) -> list[Any]:
    """Run independent registry calls together; results in order; after all finished, the first error.

    The pool lives as long as the process: starting threads costs milliseconds each on a busy
    machine, as much as the round trips themselves; and the caller runs the first call itself, one
    thread hand-off fewer. A call must not use _parallel itself (a full pool would wait on itself).
    """
    global _pool
    if len(calls) <= 1:
        return [c() for c in calls]
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=POOL_WORKERS, thread_name_prefix="baseroll-rebase")
    futures = [_pool.submit(c) for c in calls[1:]]
    try:
        first = calls[0]()
    finally:
        wait(futures)  # never return (or raise) with calls still running against the client
    return [first, *(f.result() for f in futures)]


def _push_manifest(client: RegistryClient, ref: ImageRef, raw: bytes, media_type: str) -> bool:
    """PUT unless ``ref`` already resolves to exactly these bytes (a re-run); True when written."""
    if client.head_manifest(ref) == oci.sha256_digest(raw):
        return False
    client.put_manifest(ref, raw, media_type)
    return True
