"""Pure rebase of one single-platform image onto a new base (docs/OCI.md#rebase). No I/O.

Inputs are plain dicts as read from the registry; the output is the exact bytes to push. The same
inputs always give the same bytes (canonical JSON), hence the same digest, so a re-run is a no-op.

Deliberate differences from ``crane rebase`` (docs/OCI.md#rebase, item 9), each unit-tested:
- layers are taken from the manifests by position, never rebuilt from history, so an original
  without history keeps every app layer and an old base without history does not duplicate layers;
- layer descriptors are copied, never keyed by diff_id, so equal diff_ids with different digests
  stay two layers;
- the original's manifest media type is kept, and a Docker manifest never carries OCI layer types.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Sequence

from baseroll.images import oci
from baseroll.images.refs import RefError
from baseroll.images.refs import parse as parse_ref

DRIFT_KEYS = ("Env", "Entrypoint", "Cmd", "User", "WorkingDir", "ExposedPorts")
DRIFT_POLICIES = ("apply-or-refuse", "keep-app", "ignore")
PLATFORM_KEYS = ("os", "architecture", "variant", "os.version", "os.features")
_MISSING = object()


class RebaseError(ValueError):
    """The rebase was refused; the message says why (shown to operators as is)."""


@dataclass(frozen=True)
class ImageParts:
    """One platform of an image: its manifest, that manifest's media type, and its config."""

    manifest: dict[str, Any]
    media_type: str
    config: dict[str, Any]


@dataclass(frozen=True)
class RebaseOutput:
    manifest: bytes
    media_type: str
    config: bytes
    config_digest: str
    base_layers: tuple[dict[str, Any], ...]  # descriptors (from the new base) the target repo must hold
    warnings: tuple[str, ...] = field(default=())

    @property
    def manifest_digest(self) -> str:
        return oci.sha256_digest(self.manifest)


def rebase(
    original: ImageParts,
    old_base: ImageParts,
    new_base: ImageParts,
    *,
    new_base_name: str,
    new_base_digest: str,
    drift_policy: str = "apply-or-refuse",
) -> RebaseOutput:
    """Replace ``old_base``'s layers at the bottom of ``original`` by ``new_base``'s.

    ``new_base_name`` is the fully qualified tag form (``host/repo:tag``) and ``new_base_digest``
    the digest that reference resolved to; both go into the base annotations.
    ``drift_policy`` decides what happens when the new base changed Env/Entrypoint/Cmd/User/
    WorkingDir/ExposedPorts (see ``_apply_drift``).
    """
    if drift_policy not in DRIFT_POLICIES:
        raise RebaseError(f"unknown drift policy {drift_policy!r}; expected one of {', '.join(DRIFT_POLICIES)}")
    _check_base_ref(new_base_name, new_base_digest)
    for label, parts in (("original", original), ("old base", old_base), ("new base", new_base)):
        _check_parts(parts, label)
    _check_platforms(original, old_base, new_base)
    n_old = _check_prefix(original, old_base)

    warnings: list[str] = []
    base_layers = _fit_layers(original.media_type, new_base.manifest["layers"], warnings)
    layers = base_layers + oci.deepcopy_json(original.manifest["layers"][n_old:])

    config = _new_config(original, old_base, new_base, n_old, drift_policy, warnings)
    config_bytes = oci.canonical_json(config)
    manifest = oci.deepcopy_json(original.manifest)
    manifest["config"] = {
        **original.manifest["config"],
        "digest": oci.sha256_digest(config_bytes),
        "size": len(config_bytes),
    }
    manifest["layers"] = layers
    annotations = dict(manifest.get("annotations") or {})
    annotations[oci.ANNOTATION_BASE_NAME] = new_base_name
    annotations[oci.ANNOTATION_BASE_DIGEST] = new_base_digest
    manifest["annotations"] = annotations

    unique: dict[str, dict[str, Any]] = {}
    for d in base_layers:  # a blob is mounted once even if the manifest lists it twice
        unique.setdefault(d["digest"], d)
    return RebaseOutput(
        manifest=oci.canonical_json(manifest),
        media_type=original.media_type,
        config=config_bytes,
        config_digest=oci.sha256_digest(config_bytes),
        base_layers=tuple(unique.values()),
        warnings=tuple(warnings),
    )


# ---------------------------------------------------------------- checks (rules 1, 2, platform)


def _check_base_ref(name: str, digest: str) -> None:
    try:
        ref = parse_ref(name)
    except RefError as e:
        raise RebaseError(f"new base name {name!r} is not a fully qualified reference: {e}") from None
    if ref.digest:
        raise RebaseError(f"new base name {name!r} must be the tag form, without a digest")
    if not oci.is_digest(digest):
        raise RebaseError(f"new base digest {digest!r} is not sha256:<64 hex>")


def _check_parts(parts: ImageParts, label: str) -> None:
    """Every field the rebase reads has the type the spec gives it (a hostile registry may send any)."""
    mt = parts.media_type
    if not isinstance(mt, str) or not isinstance(parts.manifest, dict):
        raise RebaseError(f"{label}: the manifest or its media type is malformed")
    if mt in oci.SCHEMA1_TYPES or parts.manifest.get("schemaVersion") == 1:
        raise RebaseError(f"{label}: Docker schema1 manifests are not supported")
    if mt in oci.INDEX_TYPES:
        raise RebaseError(f"{label}: is an index; rebase works on one platform's manifest")
    if mt not in oci.MANIFEST_TYPES:
        raise RebaseError(f"{label}: unsupported manifest media type {mt!r}")
    try:
        oci.validate_manifest(parts.manifest, label)
        oci.validate_config(parts.config, f"{label} config")
        oci.canonical_json(parts.config)  # encodable (no NaN, no infinity), so the rebased config is too
    except oci.OCIError as e:
        raise RebaseError(str(e)) from None
    diff_ids = parts.config["rootfs"]["diff_ids"]
    # Rule 2: a config that does not describe exactly the manifest's layers cannot be spliced.
    if len(diff_ids) != len(parts.manifest["layers"]):
        raise RebaseError(
            f"{label}: config has {len(diff_ids)} diff_ids but the manifest has {len(parts.manifest['layers'])} layers"
        )


def _check_platforms(original: ImageParts, old_base: ImageParts, new_base: ImageParts) -> None:
    platforms = {}
    for label, parts in (("original", original), ("old base", old_base), ("new base", new_base)):
        p = oci.config_platform(parts.config)
        if p is None:
            raise RebaseError(f"{label}: config has no os/architecture")
        platforms[label] = p
    want = platforms["original"]
    for label in ("old base", "new base"):
        if not platforms[label].matches(want):
            raise RebaseError(f"platform mismatch: original is {want}, {label} is {platforms[label]}")


def _check_prefix(original: ImageParts, old_base: ImageParts) -> int:
    """Rule 1: the old base's layers are the original's first layers (by digest, else by diff_id)."""
    o_layers, b_layers = original.manifest["layers"], old_base.manifest["layers"]
    o_ids, b_ids = original.config["rootfs"]["diff_ids"], old_base.config["rootfs"]["diff_ids"]
    if len(b_layers) > len(o_layers):
        raise RebaseError(
            f"old base is not a prefix of the original: it has {len(b_layers)} layers, the original {len(o_layers)}"
        )
    for i, (o, b) in enumerate(zip(o_layers, b_layers)):
        if o["digest"] != b["digest"] and o_ids[i] != b_ids[i]:
            raise RebaseError(
                f"old base is not a prefix of the original: layer {i} is {o['digest']} in the original, "
                f"{b['digest']} in the old base"
            )
    return len(b_layers)


# ---------------------------------------------------------------- layers (rule 3)


def _fit_layers(manifest_type: str, layers: Sequence[dict[str, Any]], warnings: list[str]) -> list[dict[str, Any]]:
    """New base descriptors, copied verbatim, except that a Docker manifest may not hold OCI types.

    crane wrote Docker manifests around OCI layers (docs/OCI.md#rebase, item 9); Docker runtimes
    reject that. The gzip types have byte-identical Docker twins, so only the label changes;
    anything else is refused.
    """
    out = oci.deepcopy_json(list(layers))
    if manifest_type != oci.DOCKER_MANIFEST:
        return out
    for d in out:
        mt = d["mediaType"]
        if not mt.startswith("application/vnd.oci."):
            continue
        twin = oci.OCI_TO_DOCKER_LAYER.get(mt)
        if twin is None:
            raise RebaseError(
                f"new base layer {d['digest']} has media type {mt}, which a Docker manifest cannot carry; "
                "rebuild the application as an OCI image"
            )
        d["mediaType"] = twin
        warnings.append(f"new base layer {d['digest']}: {mt} relabelled {twin} to fit the Docker manifest")
    return out


# ---------------------------------------------------------------- config (rules 4 and 8)


def _new_config(
    original: ImageParts,
    old_base: ImageParts,
    new_base: ImageParts,
    n_old: int,
    drift_policy: str,
    warnings: list[str],
) -> dict[str, Any]:
    o, b, n = original.config, old_base.config, new_base.config
    cfg = oci.deepcopy_json(o)  # a dict, so fields we do not know survive
    rootfs = dict(cfg.get("rootfs") or {})
    rootfs["type"] = rootfs.get("type", "layers")
    rootfs["diff_ids"] = list(n["rootfs"]["diff_ids"]) + list(o["rootfs"]["diff_ids"][n_old:])
    cfg["rootfs"] = rootfs

    history = _new_history(original, old_base, new_base, n_old, warnings)
    if history is None:
        cfg.pop("history", None)
    else:
        cfg["history"] = history

    for key in PLATFORM_KEYS:
        if key in n:
            cfg[key] = oci.deepcopy_json(n[key])
        else:
            cfg.pop(key, None)

    created = _created(o.get("created"), n.get("created"))
    if created is not None:
        cfg["created"] = created

    run = _apply_drift(_run_config(o), _run_config(b), _run_config(n), drift_policy, warnings)
    if run or "config" in cfg:
        cfg["config"] = run
    return cfg


def _is_empty_layer(h: Any) -> bool:
    return isinstance(h, dict) and h.get("empty_layer") is True


def _new_history(
    original: ImageParts, old_base: ImageParts, new_base: ImageParts, n_old: int, warnings: list[str]
) -> list[dict[str, Any]] | None:
    """New base history + the original's entries after the old base's; None = drop history.

    The split counts non-empty entries, never list lengths: that is how crane lost the first app
    layer (original without history) and duplicated the base (old base without history).
    """
    o_hist = original.config.get("history") or []
    n_hist = new_base.config.get("history") or []
    if oci.non_empty(o_hist) != len(original.manifest["layers"]):
        if o_hist:
            warnings.append("original history does not match its layers; history dropped")
        return None
    if oci.non_empty(n_hist) != len(new_base.manifest["layers"]):
        warnings.append("new base history does not match its layers; history dropped")
        return None
    split = _history_split(o_hist, old_base.config.get("history") or [], n_old)
    return oci.deepcopy_json(n_hist) + oci.deepcopy_json(o_hist[split:])


def _history_split(o_hist: list[Any], b_hist: list[Any], n_old: int) -> int:
    # When the original starts with the old base's exact history, the base's trailing empty
    # entries (its ENV, CMD...) go with it.
    if b_hist and o_hist[: len(b_hist)] == b_hist and oci.non_empty(b_hist) == n_old:
        return len(b_hist)
    if n_old == 0:
        return 0
    seen = 0
    for i, h in enumerate(o_hist):
        if not _is_empty_layer(h):
            seen += 1
            if seen == n_old:
                return i + 1
    return len(o_hist)  # unreachable: the caller checked the count


_FRACTION = re.compile(r"(\.\d{6})\d+")


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    text = _FRACTION.sub(r"\1", value.strip())  # Go writes nanoseconds; Python keeps micro
    try:
        t = datetime.fromisoformat(text)
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


def _created(o_created: Any, n_created: Any) -> Any:
    """The later of the original's and the new base's ``created``, as that input wrote it.

    Deterministic (no clock), and never earlier than the new base the image now contains.
    When only one parses, that one; when neither, the original's value unchanged.
    """
    o_t, n_t = _parse_time(o_created), _parse_time(n_created)
    if o_t is not None and n_t is not None:
        return n_created if n_t > o_t else o_created
    if n_t is not None and o_t is None:
        return n_created
    return o_created


# ---------------------------------------------------------------- drift (rule 8)


def _run_config(config: dict[str, Any]) -> dict[str, Any]:
    run = config.get("config")
    return run if isinstance(run, dict) else {}


def _norm(value: Any) -> Any:
    """Docker writes null, [] or omits a field for the same thing; compare them as equal."""
    return None if value in (None, [], {}, "") else value


def _env_map(env: Any, label: str) -> dict[str, str | None]:
    if env is None:
        return {}
    if not isinstance(env, list) or not all(isinstance(e, str) for e in env):
        raise RebaseError(f"{label}: config Env is not a list of strings")
    out: dict[str, str | None] = {}
    for entry in env:
        name, sep, value = entry.partition("=")
        out[name] = value if sep else None
    return out


def _env_list(env: dict[str, str | None]) -> list[str]:
    return [name if value is None else f"{name}={value}" for name, value in env.items()]


@dataclass
class _Drift:
    """What the new base changed against the old one, by key (or ``Env NAME``)."""

    drifted: list[str] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)  # ...where the app has its own value
    applied: list[str] = field(default_factory=list)  # ...where the app kept the old base's value


def _env_drift(o_env: dict[str, str | None], b: dict[str, Any], n: dict[str, Any],
               drift: _Drift) -> dict[str, str | None]:
    """The original's Env with each variable the new base changed taken from it, unless overridden."""
    b_env, n_env = _env_map(b.get("Env"), "old base"), _env_map(n.get("Env"), "new base")
    env = dict(o_env)
    for name in list(n_env) + [k for k in b_env if k not in n_env]:
        if b_env.get(name, _MISSING) == n_env.get(name, _MISSING):
            continue
        drift.drifted.append(f"Env {name}")
        if o_env.get(name, _MISSING) != b_env.get(name, _MISSING):
            drift.conflicts.append(f"Env {name}")
            continue
        if name in n_env:
            env[name] = n_env[name]
        else:
            env.pop(name, None)
        drift.applied.append(f"Env {name}")
    return env


def _keys_drift(o: dict[str, Any], b: dict[str, Any], n: dict[str, Any], drift: _Drift) -> dict[str, Any]:
    """The new base's value of every other drift key it changed and the app did not override."""
    pending: dict[str, Any] = {}
    for key in DRIFT_KEYS[1:]:
        bv, nv = _norm(b.get(key)), _norm(n.get(key))
        if bv == nv:
            continue
        drift.drifted.append(key)
        if _norm(o.get(key)) != bv:
            drift.conflicts.append(key)
        else:
            pending[key] = n.get(key)
            drift.applied.append(key)
    return pending


def _apply_drift(
    o: dict[str, Any], b: dict[str, Any], n: dict[str, Any], policy: str, warnings: list[str]
) -> dict[str, Any]:
    """The original's run config with the new base's changes applied where the app did not override.

    A key (or, for Env, a variable) that the new base changed against the old base is taken from the
    new base when the original still has the old base's value. When the original has its own value
    the app overrode it (possibly derived from the old value, like PATH=/app/bin:$PATH), so nothing
    can be inferred: "apply-or-refuse" refuses naming every such key, "keep-app" keeps the app's
    value with a warning, and "ignore" changes nothing at all (crane's behaviour) but warns.
    """
    out = oci.deepcopy_json(o)
    drift = _Drift()
    o_env = _env_map(o.get("Env"), "original")
    env = _env_drift(o_env, b, n, drift)
    pending = _keys_drift(o, b, n, drift)
    if not drift.drifted:
        return out
    if policy == "ignore":
        warnings.append(f"new base changed {', '.join(drift.drifted)}; drift policy 'ignore' kept the original's values")
        return out
    if drift.conflicts and policy == "apply-or-refuse":
        raise RebaseError(
            f"config drift: the new base changed {', '.join(drift.conflicts)}, which the application overrides; "
            "rebuild the image or choose drift policy 'keep-app'"
        )
    if drift.conflicts:
        warnings.append(f"new base changed {', '.join(drift.conflicts)}; kept the application's values "
                        "(drift policy 'keep-app')")
    if env != o_env:
        out["Env"] = _env_list(env)
    for key, value in pending.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = oci.deepcopy_json(value)
    if drift.applied:
        warnings.append(f"applied the new base's {', '.join(drift.applied)}")
    return out


# ---------------------------------------------------------------- index (rule 7)


def child_descriptor(original: dict[str, Any], manifest: bytes, media_type: str) -> dict[str, Any]:
    """The original index entry (platform, annotations...) pointing at a rebased child."""
    d = oci.deepcopy_json(original)
    d.update(mediaType=media_type, digest=oci.sha256_digest(manifest), size=len(manifest))
    return d


def rebuild_index(index: dict[str, Any], children: Sequence[dict[str, Any]]) -> bytes:
    """The original index (media type, annotations, unknown fields) listing ``children`` in order."""
    if not children:
        raise RebaseError("index would have no children left")
    out = oci.deepcopy_json(index)
    out["manifests"] = oci.deepcopy_json(list(children))
    return oci.canonical_json(out)
