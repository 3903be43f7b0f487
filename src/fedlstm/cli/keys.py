"""`fedlstm keys init|show|trust|untrust|sign`: who may write the bundles this host loads.

`keys_app` is added to the main typer app by `fedlstm.cli.main`; the options every
bundle-loading command shares (`--trusted-key`, `--allow-unsigned`) and `load_bundle`, which
`detect`, `serve` and `evaluate` load through, live in `fedlstm.cli.common`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.text import Text

from fedlstm.cli.common import console, fail, out_console, say

keys_app = typer.Typer(no_args_is_help=True, help="Signing keys: bundles you write are signed "
                       "with your key; bundles you load must be signed by a trusted key.")

KeyDir = Annotated[Optional[Path], typer.Option(
    "--dir", help="Key home (default: $FEDLSTM_KEYS, else $FEDLSTM_HOME/keys, else ~/.fedlstm/keys).")]
def _home(path: Path | None):
    from fedlstm.detection.signing import KeyHome

    return KeyHome(path) if path is not None else KeyHome.default()


@keys_app.command("init")
def init(dir_: KeyDir = None) -> None:
    """Create this host's signing key pair (the private key is readable by you only)."""
    from fedlstm.detection.signing import KeyFileError

    home = _home(dir_)
    try:
        key = home.init()
    except (FileExistsError, KeyFileError, OSError) as exc:
        fail(exc)
    say(f"signing key created: {key.path} (mode 0600)\n"
        f"public key: {key.public.source}\nfingerprint: {key.fingerprint}")


@keys_app.command("show")
def show(dir_: KeyDir = None) -> None:
    """Print your public key, its fingerprint and the keys you trust.

    The public key goes to stdout (`fedlstm keys show > me.pub`), the rest to stderr.
    """
    from fedlstm.detection.signing import KeyFileError

    home = _home(dir_)
    try:
        key = home.signing_key(create=False)
    except KeyFileError as exc:
        fail(exc)
    out_console.print(Text(key.public.openssh()), end="", highlight=False, soft_wrap=True)
    say(f"fingerprint: {key.fingerprint}  (key home {home.path})")
    trusted = home.trusted()
    console.print(f"{len(trusted)} other trusted key{'s' if len(trusted) != 1 else ''}"
                  + (":" if trusted else ""))
    for k in trusted:
        say(f"  {k.fingerprint}  {k.label}")


@keys_app.command("trust")
def trust(
    pubfile: Annotated[Path, typer.Argument(help="Their public key (OpenSSH line or PEM), e.g. the "
                                                 "coordinator's signing.pub.")],
    name: Annotated[Optional[str], typer.Option(help="Label (default: the key's comment).")] = None,
    dir_: KeyDir = None,
) -> None:
    """Accept bundles signed by another party's key (e.g. your federation coordinator's).

    Compare the fingerprint printed here with the one its owner sees in `fedlstm keys show`.
    """
    from fedlstm.detection.signing import KeyFileError

    try:
        key, added = _home(dir_).trust(pubfile, name)
    except (KeyFileError, OSError) as exc:
        fail(exc)
    what = "now trusted" if added else "already trusted"
    say(f"{what}: {key.fingerprint}  {key.label}")


@keys_app.command("untrust")
def untrust(fingerprint: Annotated[str, typer.Argument(help="SHA256:... as `keys show` lists it.")],
            dir_: KeyDir = None) -> None:
    """Stop accepting bundles signed by a key added with `keys trust`."""
    removed = _home(dir_).untrust(fingerprint)
    if not removed:
        fail(ValueError(f"no trusted key has fingerprint {fingerprint}"))
    say(f"no longer trusted: {fingerprint}")


@keys_app.command("sign")
def sign(
    bundle: Annotated[Path, typer.Argument(help="A model bundle to sign with your key.")],
    force: Annotated[bool, typer.Option(help="Re-sign even if its signature does not match its "
                                             "contents (only after an edit you made).")] = False,
    dir_: KeyDir = None,
) -> None:
    """Sign a bundle you vouch for (an old unsigned one, or one a run wrote unsigned).

    The bundle must pass every check of loading but the signature.
    """
    from fedlstm.detection import BundleError
    from fedlstm.detection.bundle import sign_file
    from fedlstm.detection.signing import KeyFileError

    home = _home(dir_)
    try:
        key = home.signing_key()
        before = sign_file(bundle, key, home.trust_store(), force=force)
    except (BundleError, KeyFileError, OSError) as exc:
        fail(exc)
    was = f" (was signed by {before})" if before else " (was unsigned)"
    say(f"{bundle} signed by {key.fingerprint}{was}")
