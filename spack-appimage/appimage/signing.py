"""Signed images, in the AppImage layout: the runtime's ``.sha256_sig`` section holds an
ASCII-armored detached signature of the image's digest, ``.sig_key`` the signing key's
public part, each followed by zeros to the section's end.

The digest is what appimagetool signs and the AppImage validators recompute: the SHA-256,
as 64 lowercase hex digits, of the file with the bytes of both sections counted as zeros,
so the signature can live in the file it signs. For an unsigned image it is the file's
plain SHA-256; the SBOM records it either way.

Keys are Spack's (:mod:`gnupg`): images are signed with a secret key of Spack's keyring,
and verified against what ``spack gpg trust`` trusts, never against the key the image
carries (anyone can put a key there). The carried key must still be the signer's, and
each section must hold its armored text exactly as gpg writes it and zeros after it, so
a changed byte anywhere in the file fails verification.
"""

import base64
import binascii
import hashlib
import os
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

from elftools.common.exceptions import ELFError

from . import gnupg
from .assemble import fill_section, section
from .errors import AppImageError

#: The AppImage sections: the signature, then the public key.
SIGNATURE, KEY = ".sha256_sig", ".sig_key"

#: What a trial signature signs while the build checks the key: a digest's length.
TRIAL = b"0" * 64

#: ``TRUST_*`` status lines of a signature by a key Spack's keyring trusts (directly:
#: :func:`gnupg.run`); ``spack gpg trust`` and ``spack gpg create`` trust ultimately.
TRUSTED = ("TRUST_ULTIMATE", "TRUST_FULLY")

#: What makes signatures small enough for the section (RSA-4096 ones take about 830 bytes
#: of its 1024, notations add their text).
SMALLER = ("sign with an RSA key of at most 4096 bits or an ECC key (spack gpg create makes "
           "one), without notations in gpg.conf")

#: The largest section verification reads: the format's are 1024 and 8192 bytes, so a
#: larger one is a changed section header (not a reason to read gigabytes).
LARGEST = 1 << 14

#: What to do with an image that changed after it was signed.
AGAIN = "get the image again from its source"

#: How to get a signer's key into Spack's keyring, said when it is missing or untrusted.
TRUST_FIX = "if you trust the signer, get their public key and run spack gpg trust FILE"

Where = Tuple[Tuple[int, int], Tuple[int, int]]


@dataclass(frozen=True)
class Signer:
    """The key a build signs with, resolved and tried before anything is written."""

    fingerprint: str
    uid: str
    public_key: bytes
    #: the key's passphrase (:func:`gnupg.take_passphrase`), if it needs one
    passphrase: Optional[str] = field(repr=False)

    def record(self) -> dict:
        """What the manifest says of the signature."""
        return {"key": self.fingerprint, "uid": self.uid}


@dataclass(frozen=True)
class Verdict:
    """What ``--verify`` says of one file: one line, and whether it passed."""

    ok: bool
    line: str


def sections(path: str) -> Optional[Where]:
    """(offset, size) of ``.sha256_sig`` and ``.sig_key`` in the ELF part of ``path``, or
    None if it lacks either."""
    signature, key = section(path, SIGNATURE), section(path, KEY)
    return (signature, key) if signature and key else None


def digest(path: str, where: Optional[Where]) -> str:
    """The image's digest: SHA-256 of ``path`` with the sections ``where`` as zeros."""
    sha256 = hashlib.sha256()
    at = 0
    with open(path, "rb") as f:
        for start, size in sorted(where or ()):
            _hash(f, sha256, start - at)
            f.seek(size, 1)
            sha256.update(bytes(size))
            at = start + size
        _hash(f, sha256, None)
    return sha256.hexdigest()


def _hash(f, sha256, count: Optional[int]) -> None:
    """``count`` bytes of ``f`` (None: all that is left) into ``sha256``."""
    while count is None or count > 0:
        block = f.read(1 << 20 if count is None else min(1 << 20, count))
        if not block:
            return
        sha256.update(block)
        if count is not None:
            count -= len(block)


def prepare(selector: Optional[str], runtime_file: str) -> Signer:
    """The signer of a build: the one signing key of Spack's keyring, or the one that
    ``selector`` names, with its public key and a trial signature checked against the
    sections of ``runtime_file``, so that a missing key, a passphrase that is not there
    or a signature too large is an error before the build writes anything."""
    where = sections(runtime_file)
    if where is None:
        raise AppImageError(f"the runtime {runtime_file} has no {SIGNATURE} and {KEY} "
                            "sections to sign into",
                            "use the project's runtime (leave out --runtime) or "
                            "AppImage/type2-runtime")
    fingerprints = gnupg.secret_keys(selector)
    named = f" named {selector}" if selector else ""
    if not fingerprints:
        raise AppImageError(
            f"no signing key{named} in Spack's keyring ({gnupg.home()})",
            "create one with spack gpg create NAME EMAIL, or import yours with spack gpg "
            "trust FILE (spack gpg list --signing lists them)")
    if len(fingerprints) > 1:
        raise AppImageError(f"{len(fingerprints)} signing keys{named} in Spack's keyring "
                            f"({', '.join(fingerprints)})", "pass --sign with one of them")
    fingerprint = fingerprints[0]
    public_key = gnupg.export(fingerprint)
    _check_fits(public_key, where[1], f"the public key {fingerprint}",
                "sign with a key with fewer user IDs")
    passphrase = gnupg.take_passphrase()
    _check_fits(gnupg.sign(fingerprint, TRIAL, passphrase), where[0],
                f"a signature by {fingerprint}", SMALLER)
    found = gnupg.identity(public_key)
    return Signer(fingerprint, found[1] if found else "", public_key, passphrase)


def _check_fits(data: bytes, where: Tuple[int, int], what: str, fix: str) -> None:
    """Room for ``data`` and a NUL after it (validators read the section as a C string)."""
    if len(data) >= where[1]:
        raise AppImageError(f"{what} takes {len(data)} bytes, more than the image's "
                            f"{where[1] - 1}", fix)


def sign(image: str, where: Where, image_digest: str, signer: Signer) -> None:
    """Write the signature of ``image_digest`` and the signer's public key into
    ``image``'s sections ``where`` (the last write of a build)."""
    signature = gnupg.sign(signer.fingerprint, image_digest.encode(), signer.passphrase)
    _check_fits(signature, where[0], f"the signature by {signer.fingerprint}", SMALLER)
    fill_section(image, where[0], signature)
    fill_section(image, where[1], signer.public_key)


def verify(path: str) -> Verdict:
    """Whether ``path`` is an image signed by a key that Spack's keyring trusts, whose
    bytes are all as they were signed."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb"):
            pass
    except OSError as e:
        return _fails(path, f"cannot be read: {e.strerror}", "check the path and its "
                      "permissions")
    try:
        where = sections(path)
        if where is None:
            return _fails(path, f"has no {SIGNATURE} and {KEY} sections: not an AppImage "
                                "that can be signed", "verify an image that spack appimage "
                                "--sign made")
        if any(offset + length > size or length > LARGEST for offset, length in where):
            raise ValueError("a section beyond the file, or larger than the format's")
        signature, key = (_read(path, at) for at in where)
        image_digest = digest(path, where)
    except (ELFError, ValueError, OverflowError, OSError):
        return _fails(path, "is not a readable ELF file: not an AppImage, or its ELF "
                            "headers changed", f"check the path, or {AGAIN}")
    if signature == key == b"":
        return _fails(path, "is not signed", "build it with spack appimage --sign")
    if not (signature and key and _armored(signature, "SIGNATURE")
            and _armored(key, "PUBLIC KEY BLOCK")):
        return _fails(path, "has signature sections that are not as gpg wrote them: it "
                            "changed after it was signed", AGAIN)
    return _judge(path, gnupg.verify(signature, image_digest.encode()),
                  gnupg.identity(key))


def _read(path: str, where: Tuple[int, int]) -> Optional[bytes]:
    """The text of a section (up to its first NUL); None if anything but zeros follows."""
    offset, size = where
    with open(path, "rb") as f:
        f.seek(offset)
        data = f.read(size)
    text, _, rest = data.partition(b"\0")
    return None if rest.strip(b"\0") else text


def _armored(text: bytes, kind: str) -> bool:
    """Whether ``text`` is one ASCII-armored block of ``kind`` exactly as gpg writes it:
    no header lines, base64 in lines of 64, the CRC-24 of what it encodes. gpg itself
    reads armor leniently (a changed END line, padding or line break, a header added:
    each still verifies), so a byte of a section could change unnoticed."""
    lines = text.split(b"\n")
    if len(lines) < 5 or not lines[-3].startswith(b"="):
        return False
    try:
        data = base64.b64decode(b"".join(lines[2:-3]), validate=True)
    except binascii.Error:
        return False
    encoded = base64.b64encode(data)
    crc = base64.b64encode(_crc24(data).to_bytes(3, "big"))
    return text == b"\n".join([f"-----BEGIN PGP {kind}-----".encode(), b""]
                              + [encoded[i:i + 64] for i in range(0, len(encoded), 64)]
                              + [b"=" + crc, f"-----END PGP {kind}-----".encode(), b""])


def _crc24(data: bytes) -> int:
    """The armor's checksum (RFC 4880, 6.1)."""
    crc = 0xB704CE
    for byte in data:
        crc ^= byte << 16
        for _ in range(8):
            crc <<= 1
            if crc & 0x1000000:
                crc ^= 0x1864CFB
    return crc & 0xFFFFFF


def _judge(path: str, result: "gnupg.Run", carried: Optional[Tuple[str, str]]) -> Verdict:
    """The verdict from gpg's status lines and the key the image carries."""
    status = result.status
    if result.count("NEWSIG") > 1:  # only the first would be named
        return _fails(path, f"holds {result.count('NEWSIG')} signatures: it changed after "
                            "it was signed", AGAIN)
    if "BADSIG" in status:
        return _fails(path, f"has a BAD signature by key {status['BADSIG'][0]}: it changed "
                            "after it was signed", AGAIN)
    if "VALIDSIG" in status:
        arguments = status["VALIDSIG"]
        fingerprint = arguments[9] if len(arguments) > 9 else arguments[0]  # the primary
        if carried is None or carried[0] != fingerprint:
            return _fails(path, f"is signed by key {fingerprint}, but its {KEY} section is "
                                "not that key: it changed after it was signed", AGAIN)
        signer = f"{carried[1]} (key {fingerprint})"
        for keyword, says in (("EXPSIG", "the signature has expired"),
                              ("EXPKEYSIG", "the key has expired"),
                              ("REVKEYSIG", "the key was revoked")):
            if keyword in status:
                return _fails(path, f"is signed by {signer}, but {says}",
                              "ask the signer for a newly signed image")
        if not any(keyword in status for keyword in TRUSTED):
            return _fails(path, f"is signed by {signer}, a key Spack's keyring does not "
                                "trust", TRUST_FIX)
        if result.returncode == 0:
            return Verdict(True, f"{path}: signed by {signer}, trusted in Spack's keyring")
    if "NO_PUBKEY" in status:
        issuer = _issuer(status["ERRSIG"] if "ERRSIG" in status else status["NO_PUBKEY"])
        named = f" ({carried[1]}, as the image says)" if carried and carried[0].endswith(
            issuer) else ""
        return _fails(path, f"is signed by key {issuer}{named}, which is not in Spack's "
                            "keyring", TRUST_FIX)
    cause = (f"finds no signature in its {SIGNATURE} section" if "NODATA" in status
             else f"cannot check its signature ({result.message()})")
    return _fails(path, f"is damaged: gpg {cause}", AGAIN)


def _issuer(arguments: List[str]) -> str:
    """The signing key's fingerprint from an ``ERRSIG`` line (its last argument, in gpg
    2.2.7 and later), else its long key ID."""
    return arguments[6] if len(arguments) > 6 and arguments[6] != "-" else arguments[0]


def _fails(path: str, cause: str, fix: str) -> Verdict:
    return Verdict(False, f"{path} {cause}; {fix}")
