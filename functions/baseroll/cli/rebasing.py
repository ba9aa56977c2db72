"""`baseroll rebase`: one image moved onto a new base in the registry, as `crane rebase` does."""
from __future__ import annotations

from typing import TYPE_CHECKING

import click

from baseroll.cli.common import EXIT_INVALID, CliState, emit_json, fail
from baseroll.images.rebase import DRIFT_POLICIES

if TYPE_CHECKING:
    from baseroll.images.refs import ImageRef


@click.command()
@click.argument("app")
@click.option("--old-base", required=True, metavar="REF", help="The base the app was built on (tag or digest).")
@click.option("--new-base", required=True, metavar="REF", help="The base to move it onto (tag or digest).")
@click.option("--tag", metavar="TAG|REF",
              help="Also tag the result: a bare tag (in APP's repository) or a whole host/repo:tag.")
@click.option("--platform", help="Rebase only this platform (os/arch[/variant]) of a multi-platform app.")
@click.option("--drift-policy", type=click.Choice(DRIFT_POLICIES), default="apply-or-refuse",
              show_default=True, help="When the new base changed Env/Entrypoint/Cmd/User/WorkingDir/ExposedPorts.")
@click.option("--plain-http", "plain_http", multiple=True, metavar="HOST[:PORT]",
              help="More registries to reach over plain HTTP (loopback addresses need no flag).")
@click.option("--dry-run", is_flag=True, help="Compute the result and its digest; push nothing.")
@click.pass_obj
def rebase(state: CliState, app: str, old_base: str, new_base: str, tag: str | None, platform: str | None,
           drift_policy: str, plain_http: tuple[str, ...], dry_run: bool) -> None:
    """Rebase APP from --old-base onto --new-base in the registry (like `crane rebase`, but
    multi-platform, drift-aware, verified, and moving no layer: only manifests and configs).

    \b
    baseroll rebase HOST/apps/shop:v1 --old-base HOST/bases/python:3.12-p1 --new-base HOST/bases/python:3.12 --tag v1-rebased
    baseroll rebase HOST/apps/shop:v1 --old-base ... --new-base ... --tag HOST/apps/shop-rebased:v1
    """
    from baseroll.images import rebaser, refs
    from baseroll.images.oci import OCIError
    from baseroll.images.rebase import RebaseError

    try:
        app_ref, old_ref, new_ref = refs.parse(app), refs.parse(old_base), refs.parse(new_base)
    except refs.RefError as exc:
        fail(EXIT_INVALID, str(exc))
    target = target_ref(app_ref, tag) if tag else None
    hosts = {app_ref.registry, old_ref.registry, new_ref.registry}
    # Only the extra hosts given: the client itself reaches loopback registries over plain HTTP.
    client = state.registry_client(hosts, plain_http)
    try:
        result = rebaser.rebase_image(client, app_ref, old_ref, new_ref, target=target, platform=platform,
                                      dry_run=dry_run, drift_policy=drift_policy)
    except (RebaseError, OCIError, ValueError) as exc:
        fail(EXIT_INVALID, f"refused: {exc}")
    stats = client.stats
    payload = {"image": str(result.ref), "digest": result.digest, "platforms": list(result.platforms),
               "pushed": result.pushed, "mounted_layers": result.mounted_layers, "warnings": list(result.warnings),
               "bytes_downloaded": stats.bytes_downloaded, "bytes_uploaded": stats.bytes_uploaded, "dry_run": dry_run}
    if state.json_output:
        emit_json(payload)
        return
    click.echo(str(result.ref))
    for warning in result.warnings:
        click.echo(f"warning: {warning}", err=True)


def target_ref(app: "ImageRef", tag: str) -> "ImageRef":
    """Where `--tag` puts the result: a bare tag names it in the app's repository; a reference
    (host/repo[:tag]) anywhere in the app's registry, where the layers can be mounted from."""
    from baseroll.images import refs

    if "/" not in tag:
        try:
            return refs.parse(f"{app.name}:{tag}")
        except refs.RefError:
            fail(EXIT_INVALID, f"--tag: {tag!r} is not a valid tag (letters, digits, _ . -; at most 128)")
    try:
        target = refs.parse(tag)
    except refs.RefError as exc:
        fail(EXIT_INVALID, f"--tag: {exc}")
    if target.digest:
        fail(EXIT_INVALID, f"--tag: {tag!r} names a digest; give host/repo:tag (the digest is the result's)")
    if target.registry != app.registry:
        fail(EXIT_INVALID, f"--tag: {target.registry} is not {app.registry}, APP's registry "
                           "(layers are mounted within one registry, never copied across)")
    return target

