"""GnuPG as Spack sets it up (``spack.util.gpg``): its key home (``$SPACK_GNUPGHOME``,
else ``<spack>/opt/spack/gpg``), the keys ``spack gpg create`` and ``spack gpg trust`` put
there, and its ``gpg`` executable, found or bootstrapped.

``spack.util.gpg`` lists keys; what images need beyond it runs Spack's ``GPG`` with more
options: a signature that never waits on a passphrase prompt (a batch job has nobody to
answer pinentry; the passphrase comes from :data:`PASSPHRASE` or gpg-agent's cache), the
status lines of a verification (``gpg --verify`` exits 0 for a good signature by a key
nobody trusts, so its exit status cannot tell them apart), and the identity of an armored
key read without importing it.
"""

import contextlib
import os
import re
import shutil
import socket
import tempfile
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Tuple

from . import prerequisites
from .compat import tty
from .errors import AppImageError

#: The environment variable that holds the signing key's passphrase, if it has one.
PASSPHRASE = "SPACK_APPIMAGE_SIGN_PASSPHRASE"

#: gpg's error codes in ``FAILURE`` status lines (libgpg-error's err-codes.h, in the low
#: 16 bits): no pinentry may ask (``--pinentry-mode error``), a wrong passphrase.
NO_PINENTRY, BAD_PASSPHRASE = 85, 11


def gpg():
    """Spack's ``GPG`` executable, set up with Spack's key home: a missing gpg or a key
    home that cannot be made is one line."""
    import spack.util.executable
    import spack.util.gpg

    if spack.util.gpg.GPG is None and not (shutil.which("gpg2") or shutil.which("gpg")):
        tty.msg("GnuPG is not on PATH: Spack bootstraps it (this can take minutes)")
    install = f"install GnuPG 2: {prerequisites.install_command('gpg')}"
    try:
        spack.util.gpg.init()
    except RuntimeError as e:  # bootstrapping failed
        raise AppImageError(f"GnuPG 2 is needed to sign and verify images, and Spack could "
                            f"not bootstrap it ({str(e).splitlines()[0]})", install) from None
    except OSError as e:  # the key home cannot be created (a read-only Spack)
        raise AppImageError(
            f"cannot create Spack's GnuPG home {e.filename}: {e.strerror}",
            "set SPACK_GNUPGHOME to a directory of yours, as for spack gpg") from None
    except (spack.util.gpg.SpackGPGError, spack.util.executable.ProcessError) as e:
        # a home that is not a directory, a gpg older than 2, gpgconf failing
        raise AppImageError(f"Spack's GnuPG cannot be used: {str(e).splitlines()[0]}",
                            f"check SPACK_GNUPGHOME, or {install}") from None
    return spack.util.gpg.GPG


def home() -> str:
    """Spack's GnuPG home, for messages."""
    import spack.util.gpg

    gpg()
    return spack.util.gpg.GNUPGHOME


@dataclass
class Run:
    """What one gpg run said: exit status, its output, its status lines (``[GNUPG:]
    KEYWORD ARGS``, in order) and its messages."""

    returncode: int
    output: bytes
    lines: List[Tuple[str, List[str]]]
    messages: List[str]

    @property
    def status(self) -> Dict[str, List[str]]:
        """keyword -> arguments of its first status line."""
        found: Dict[str, List[str]] = {}
        for keyword, arguments in self.lines:
            found.setdefault(keyword, arguments)
        return found

    def count(self, keyword: str) -> int:
        return sum(1 for k, _ in self.lines if k == keyword)

    def message(self) -> str:
        """gpg's last message, which says why it failed."""
        return self.messages[-1] if self.messages else f"gpg exited with {self.returncode}"

    def failure(self) -> Optional[int]:
        """The error code of a ``FAILURE`` or ``ERROR`` status line (``KEYWORD LOCATION
        CODE``), if any."""
        for keyword, arguments in self.lines:
            if keyword in ("FAILURE", "ERROR") and len(arguments) > 1 \
                    and arguments[1].isdigit():
                return int(arguments[1]) & 0xFFFF
        return None


def run(*args: str, stdin: bytes = b"") -> Run:
    """Spack's gpg with ``args`` in batch mode, ``stdin`` (at most a pipe's 64 KiB: a
    passphrase, a key, a digest) on its standard input, its output as bytes and its
    status lines on stderr (``--status-fd 2``). Its messages are read as UTF-8 with
    errors replaced: gpg writes them in the locale's charset (Latin-1 under ``LC_ALL=C``),
    and status lines carry UTF-8 whatever the locale. Armor has no comment or version
    lines, whatever gpg.conf says (:mod:`signing` checks the armor's exact form).

    Trust is direct: a key is trusted when the keyring itself trusts it (``spack gpg
    trust`` and ``spack gpg create`` set that), with no web of trust, whose checks would
    have gpg rewrite its trust database first: a site's shared keyring is read-only to
    its users, and gpg stops there ("failed to append a record")."""
    executable = gpg()
    read, write = os.pipe()
    with contextlib.closing(os.fdopen(read, "rb")) as source:
        with contextlib.closing(os.fdopen(write, "wb")) as sink:
            sink.write(stdin)
        with tempfile.TemporaryFile() as output, tempfile.TemporaryFile() as error:
            executable("--batch", "--no-comments", "--no-emit-version", "--trust-model",
                       "direct", "--status-fd", "2", *args, input=source, output=output,
                       error=error, fail_on_error=False)
            data, errors = (_contents(f) for f in (output, error))
    lines, messages = [], []
    for line in errors.decode("utf-8", "replace").splitlines():
        if line.startswith("[GNUPG:] "):
            keyword, *arguments = line[len("[GNUPG:] "):].split(" ")
            lines.append((keyword, arguments))
        elif line.strip():
            messages.append(line.strip())
    return Run(executable.returncode, data, lines, messages)


def _contents(f) -> bytes:
    f.seek(0)
    return f.read()


def secret_keys(selector: Optional[str]) -> List[str]:
    """Fingerprints of the signing keys in Spack's keyring that ``selector`` (a
    fingerprint, key ID, e-mail or name; None: any) names, read by Spack's own parser.
    (``spack.util.gpg.signing_keys`` runs the same listing, but lets gpg's messages
    through to the terminal and raises when nothing matches.)"""
    import spack.util.gpg

    result = run("--list-secret-keys", "--with-colons", "--fingerprint",
                 *([selector] if selector else []))
    if result.returncode and "No secret key" not in " ".join(result.messages):
        raise AppImageError(f"cannot list the signing keys of Spack's keyring ({home()}): "
                            f"{result.message()}", "check it with spack gpg list --signing")
    return spack.util.gpg._parse_secret_keys_output(result.output.decode(errors="replace"))


def export(fingerprint: str) -> bytes:
    """The armored public part of the key, without third-party signatures (it has to fit
    in the image)."""
    result = run("--armor", "--export-options", "export-minimal", "--export", fingerprint)
    if result.returncode or not result.output:
        raise AppImageError(f"cannot export the public key {fingerprint}: {result.message()}",
                            "check it with spack gpg list --signing")
    return result.output


def identity(armored: bytes) -> Optional[Tuple[str, str]]:
    """(fingerprint, first user ID) of the primary key in ``armored``, read without
    importing it; None if gpg reads no key there."""
    result = run("--with-colons", "--show-keys", stdin=armored)
    fingerprint = uid = None
    for line in result.output.splitlines():
        fields = line.split(b":")
        if fields[0] == b"fpr" and fingerprint is None:
            fingerprint = fields[9].decode()
        elif fields[0] == b"uid" and uid is None:
            uid = _unescape(fields[9])
    if result.returncode or fingerprint is None:
        return None
    return fingerprint, uid or ""


def _unescape(field: bytes) -> str:
    r"""A ``--with-colons`` field (UTF-8, with ``:`` and control bytes as ``\xNN``) as
    text."""
    return re.sub(rb"\\x([0-9a-fA-F]{2})", lambda m: bytes([int(m.group(1), 16)]),
                  field).decode("utf-8", "replace")


def take_passphrase() -> Optional[str]:
    """The passphrase in :data:`PASSPHRASE`, taken out of the environment, so that the
    programs a build runs (mksquashfs, the compiler, gpg-agent) do not inherit it."""
    return os.environ.pop(PASSPHRASE, None)


def sign(fingerprint: str, text: bytes, passphrase: Optional[str]) -> bytes:
    """An armored detached signature of ``text`` by the key, in text mode as appimagetool
    makes it, with ``passphrase`` if the key needs one (loopback: no prompt), else
    gpg-agent's cache. A key that needs one it cannot get, or gets wrong, is one line."""
    mode = ["--pinentry-mode", "loopback", "--passphrase-fd", "0"] if passphrase is not None \
        else ["--pinentry-mode", "error"]
    with _file(text) as path:
        result = run(*mode, "--local-user", fingerprint, "--textmode", "--armor",
                     "--detach-sign", "--output", "-", path,
                     stdin=(passphrase + "\n").encode() if passphrase is not None else b"")
    if result.returncode == 0 and result.output:
        return result.output
    failure = result.failure()
    if failure == NO_PINENTRY:
        raise AppImageError(
            f"the signing key {fingerprint} needs its passphrase",
            f"set {PASSPHRASE}, or sign with a key without one (spack gpg create makes "
            "those)")
    if failure == BAD_PASSPHRASE or "BAD_PASSPHRASE" in result.status:
        raise AppImageError(f"{PASSPHRASE} is not the passphrase of the signing key "
                            f"{fingerprint}", "set it to the key's passphrase")
    raise AppImageError(f"gpg could not sign with key {fingerprint}: {result.message()}",
                        "check the key with spack gpg list --signing")


@contextlib.contextmanager
def agent_stopped_after() -> Iterator[None]:
    """Stop the keyring's gpg-agent after the block if it was not running before: signing
    starts it, and it would outlive the build (a process a batch job leaves behind).
    An agent that ran before is the user's, with the passphrases it caches: it stays."""
    import spack.util.gpg

    gpg()
    gpgconf = spack.util.gpg.GPGCONF
    running = gpgconf is not None and _agent_running(gpgconf)
    try:
        yield
    finally:
        if gpgconf is not None and not running:
            gpgconf("--kill", "gpg-agent", output=str, error=str, fail_on_error=False)


def _agent_running(gpgconf) -> bool:
    """Whether an agent answers on the keyring's socket (connecting starts none)."""
    path = gpgconf("--list-dirs", "agent-socket", output=str, error=str,
                   fail_on_error=False).strip()
    with socket.socket(socket.AF_UNIX) as agent:
        try:
            agent.connect(path)
        except OSError:
            return False
    return True


def verify(signature: bytes, text: bytes) -> Run:
    """gpg's verification of the detached ``signature`` of ``text`` against Spack's
    keyring, with its status lines (trust: :func:`run`)."""
    with _file(signature) as path:
        return run("--verify", path, "-", stdin=text)


@contextlib.contextmanager
def _file(data: bytes) -> Iterator[str]:
    """``data`` in a temporary file, removed after the block (gpg reads a detached
    signature, and signs data, from a file)."""
    with tempfile.NamedTemporaryFile(prefix="spack-appimage-") as f:
        f.write(data)
        f.flush()
        yield f.name
