"""Signed images: built with a key of Spack's keyring (``--sign``), checked against the keys
it trusts (``--verify``). Real GnuPG homes made for the tests (the site's RSA key made by
``spack gpg create``, other keys by gpg), real builds, real verification by root and, in a
site's shared Spack with its read-only keyring, by an ordinary user; and the layout checked
without the extension: binutils' section offsets, hashlib's digest, and gpg with the key
the image carries, as AppImageUpdate's validator checks it.
"""

import contextlib
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import time

import pytest

from conftest import EXTENSION, _gone, readable_tmp_dir, repos_config

ENTRY = ["--entry", "ai-hello=ai-hello"]
SITE_UID = "Test Site (GPG created for Spack) <site@example.org>"
PASSPHRASE = "correct horse"
#: What each kind of failure says, after the file's name.
CHANGED = re.compile(r" (has a BAD signature by key \w+: it changed after it was signed|"
                     r"has signature sections that are not as gpg wrote them: it changed "
                     r"after it was signed|is signed by key \w+, but its \.sig_key section is "
                     r"not that key: it changed after it was signed|is damaged: gpg .*|is not "
                     r"a readable ELF file: not an AppImage, or its ELF headers changed); ")
NOT_IN_KEYRING = ("which is not in Spack's keyring; if you trust the signer, get their "
                  "public key and run spack gpg trust FILE")


@contextlib.contextmanager
def gnupg_home():
    """A GnuPG home of the test's own, its agent stopped and socket directory removed after."""
    path = tempfile.mkdtemp(prefix="ai-gnupg-")
    try:
        yield path
    finally:
        stop_gnupg(path)
        shutil.rmtree(path)


def stop_gnupg(home):
    """Stop the home's gpg-agent and remove its socket directory (Spack makes one in
    /run/user/UID/gnupg for every home that is not the default)."""
    env = dict(os.environ, GNUPGHOME=home)
    subprocess.run(["gpgconf", "--kill", "all"], env=env, capture_output=True, check=True)
    subprocess.run(["gpgconf", "--remove-socketdir"], env=env, capture_output=True,
                   check=True)


def gpg(home, *args, **kwargs):
    kwargs.setdefault("check", True)
    return subprocess.run(["gpg", "--batch", *args], env=dict(os.environ, GNUPGHOME=home),
                          capture_output=True, **kwargs)


def quick_key(home, uid, passphrase=""):
    """An ed25519 signing key made by gpg (fast), with ``passphrase`` (empty: none)."""
    gpg(home, "--pinentry-mode", "loopback", "--passphrase", passphrase, "--quick-gen-key",
        uid, "ed25519", "sign", "never")
    return fingerprints(home, uid)[0]


def fingerprints(home, *selectors):
    """The primary keys' fingerprints, in the keyring's order."""
    records = [line.split(":") for line in gpg(home, "--with-colons", "--list-secret-keys",
                                               *selectors, text=True).stdout.splitlines()]
    return [record[9] for previous, record in zip(records, records[1:])
            if previous[0] == "sec" and record[0] == "fpr"]


def spack_in(site, home, *args, **kwargs):
    """``spack ARGS`` with ``home`` as Spack's GnuPG home."""
    return site(*args, check=False, variables={"SPACK_GNUPGHOME": home}, **kwargs)


@pytest.fixture(scope="module")
def keys(site):
    """The site's signing home: its RSA-4096 key made by ``spack gpg create``, and a second
    signing key; the site key's public part exported by ``spack gpg export``, as the
    README tells a site to publish it."""
    with gnupg_home() as home, readable_tmp_dir("signing-keys-") as published:
        created = spack_in(site, home, "gpg", "create", "Test Site", "site@example.org")
        assert created.returncode == 0, created.stderr
        [site_key] = fingerprints(home, "site@example.org")
        quick_key(home, "Second Key <second@example.org>")
        public = published / "site.pub"
        exported = spack_in(site, home, "gpg", "export", str(public), site_key)
        assert exported.returncode == 0, exported.stderr
        yield home, site_key, public


def agents_of(home):
    """The gpg-agent processes serving ``home``."""
    found = subprocess.run(["pgrep", "-f", f"gpg-agent --homedir {home} "],
                           capture_output=True, text=True).stdout.split()
    return found


@pytest.fixture(scope="module")
def images(site, keys):
    """A signed image (with its SBOM and build output), and the same entry unsigned. The
    signing build starts the keyring's gpg-agent (none ran before) and stops it."""
    home, _, _ = keys
    subprocess.run(["gpgconf", "--kill", "gpg-agent"], env=dict(os.environ, GNUPGHOME=home),
                   check=True)
    assert _gone(agents_of, home, 10)  # gpgconf answers before the agent has exited
    with readable_tmp_dir("signed-") as directory:
        signed = spack_in(site, home, "appimage", *ENTRY, "-o", str(directory / "signed.app"),
                          "--sign", "site@example.org", "--sbom",
                          str(directory / "signed.json"), env=site.env)
        assert signed.returncode == 0, signed.stderr
        assert _gone(agents_of, home, 10)
        unsigned = spack_in(site, home, "appimage", *ENTRY, "-o",
                            str(directory / "unsigned.app"), "--sbom",
                            str(directory / "unsigned.json"), env=site.env)
        assert unsigned.returncode == 0, unsigned.stderr
        yield directory, signed


@pytest.fixture(scope="module")
def trusting(site, keys):
    """A verifier's keyring that trusts the site's key (``spack gpg trust``, as the README
    tells users), one that holds it untrusted (a plain ``gpg --import``), one without it."""
    _, _, public = keys
    with gnupg_home() as trusts, gnupg_home() as holds, gnupg_home() as lacks:
        trusted = spack_in(site, trusts, "gpg", "trust", str(public))
        assert trusted.returncode == 0, trusted.stderr
        gpg(holds, "--import", str(public))
        yield trusts, holds, lacks


def verify(site, home, *paths):
    result = spack_in(site, home, "appimage", "--verify", *map(str, paths))
    assert "Traceback" not in result.stderr
    return result


def test_signed_image_verifies_and_still_runs(site, keys, images, trusting):
    _, site_key, _ = keys
    directory, build = images
    signed = directory / "signed.app"
    assert re.search(rf"\[(\d+)/\1\] sign: with key {site_key}", build.stdout), build.stdout
    result = verify(site, trusting[0], signed)
    assert result.returncode == 0, result.stderr
    assert result.stdout == (f"==> {signed}: signed by {SITE_UID} (key {site_key}), trusted "
                             "in Spack's keyring\n")
    run = subprocess.run([str(signed), "x"], capture_output=True, text=True)
    assert run.returncode == 0 and "greeting=bonjour" in run.stdout, run.stderr
    manifest = json.loads(subprocess.run([str(signed), "--appimage-manifest"],
                                         capture_output=True, text=True, check=True).stdout)
    assert manifest["signature"] == {"key": site_key, "uid": SITE_UID}
    assert manifest["command"][-2:] == ["--sign", "site@example.org"]
    unsigned = json.loads(subprocess.run([str(directory / "unsigned.app"),
                                          "--appimage-manifest"], capture_output=True,
                                         text=True, check=True).stdout)
    assert unsigned["signature"] is None


def sections_by_readelf(path, with_index=False):
    """name -> (offset, size) of every section, read by binutils (with its index in the
    section header table: (offset, size, index))."""
    listing = subprocess.run(["readelf", "-SW", str(path)], capture_output=True, text=True,
                             check=True).stdout
    found = {}
    for match in re.finditer(r"\[\s*(\d+)\]\s+(\S+)\s+\S+\s+[0-9a-f]+\s+([0-9a-f]+)\s+"
                             r"([0-9a-f]+)", listing):
        where = (int(match.group(3), 16), int(match.group(4), 16))
        found[match.group(2)] = where + ((int(match.group(1)),) if with_index else ())
    return found


def test_layout_is_what_appimage_tools_read(keys, images, tmp_path):
    """The digest computed here from binutils' offsets is the SBOM's hash; each section
    holds armored text then zeros, the key right after the signature (AppImageKit's
    validate checks nothing otherwise); gpg in a fresh home, with only the key the image
    carries, finds a good signature of that digest by the site's key (AppImageUpdate's
    check); the runtime prints the signature."""
    _, site_key, _ = keys
    directory, _ = images
    signed = directory / "signed.app"
    data = signed.read_bytes()
    found = sections_by_readelf(signed)
    (sig_at, sig_size), (key_at, key_size) = found[".sha256_sig"], found[".sig_key"]
    assert (sig_size, key_size) == (1024, 8192) and key_at == sig_at + sig_size
    zeroed = bytearray(data)
    zeroed[sig_at:key_at + key_size] = bytes(sig_size + key_size)
    digest = hashlib.sha256(zeroed).hexdigest()
    sbom = json.loads((directory / "signed.json").read_text())
    assert sbom["metadata"]["component"]["hashes"] == [{"alg": "SHA-256", "content": digest}]
    texts = {}
    for name, (at, size), armor in ((".sha256_sig", found[".sha256_sig"], "SIGNATURE"),
                                    (".sig_key", found[".sig_key"], "PUBLIC KEY BLOCK")):
        text, _, rest = data[at:at + size].partition(b"\0")
        assert text.startswith(f"-----BEGIN PGP {armor}-----".encode()), name
        assert text.rstrip().endswith(f"-----END PGP {armor}-----".encode()), name
        assert rest.strip(b"\0") == b"", name
        texts[name] = tmp_path / name.lstrip(".")
        texts[name].write_bytes(text)
    (tmp_path / "digest").write_text(digest)  # 64 hex digits, no newline
    with gnupg_home() as fresh:
        gpg(fresh, "--import", str(texts[".sig_key"]))
        checked = gpg(fresh, "--status-fd", "1", "--verify", str(texts[".sha256_sig"]),
                      str(tmp_path / "digest"), text=True, check=False)
    assert checked.returncode == 0, checked.stderr
    assert re.search(rf"^\[GNUPG:\] VALIDSIG {site_key} .* {site_key}$", checked.stdout,
                     re.M), checked.stdout
    printed = subprocess.run([str(signed), "--appimage-signature"], capture_output=True,
                             check=True).stdout
    assert printed == texts[".sha256_sig"].read_bytes() + b"\n"
    # Unsigned: both sections zero, and the digest is the file's own SHA-256.
    unsigned = (directory / "unsigned.app").read_bytes()
    assert unsigned[sig_at:key_at + key_size] == bytes(sig_size + key_size)
    sbom = json.loads((directory / "unsigned.json").read_text())
    assert sbom["metadata"]["component"]["hashes"] == [
        {"alg": "SHA-256", "content": hashlib.sha256(unsigned).hexdigest()}]


def flipped_copies(signed, directory):
    """Copies of ``signed`` with one byte flipped: in each part of the runtime and of the
    squashfs, in both sections' text (their END lines too, which gpg reads leniently) and
    padding, in the section header table (an offset, and a size made huge)."""
    data = signed.read_bytes()
    found = {name: where[:2] for name, where in sections_by_readelf(signed, True).items()}
    (sig_at, _), (key_at, key_size) = found[".sha256_sig"], found[".sig_key"]
    sig_len = data.index(b"\0", sig_at) - sig_at
    key_len = data.index(b"\0", key_at) - key_at
    squashfs = int(subprocess.run([str(signed), "--appimage-offset"], capture_output=True,
                                  text=True, check=True).stdout)
    assert data[squashfs:squashfs + 4] == b"hsqs"
    shoff = int.from_bytes(data[0x28:0x30], "little")
    sig_header = shoff + 64 * sections_by_readelf(signed, True)[".sha256_sig"][2]
    where = {
        "elf-magic": 0, "elf-type": 16, "text": found[".text"][0] + found[".text"][1] // 2,
        "digest-md5": found[".digest_md5"][0], "upd-info": found[".upd_info"][0] + 5,
        "image-id": found[".spack_appimage_id"][0] + 3,
        "sig-text": sig_at + sig_len // 2, "sig-end-line": sig_at + sig_len - 3,
        "sig-padding": sig_at + sig_len + 3, "key-text": key_at + key_len // 2,
        "key-end-line": key_at + key_len - 3, "key-padding": key_at + key_size - 1,
        "section-headers": shoff + 64 + 24,  # the second header's sh_offset
        "sig-size": sig_header + 32 + 5,  # the signature section's sh_size, made huge
        "squashfs-magic": squashfs, "squashfs-middle": (squashfs + len(data)) // 2,
        "last-byte": len(data) - 1,
    }
    copies = {}
    for name, offset in where.items():
        changed = bytearray(data)
        changed[offset] ^= 0x01
        copies[name] = directory / f"{name}.app"
        copies[name].write_bytes(changed)
    return copies


def test_one_flipped_byte_anywhere_fails(site, images, trusting, tmp_path):
    directory, _ = images
    copies = flipped_copies(directory / "signed.app", tmp_path)
    result = verify(site, trusting[0], directory / "signed.app", *copies.values())
    assert result.returncode == 1
    errors = result.stderr.splitlines()
    assert len(errors) == len(copies), result.stderr
    for name, path in copies.items():
        [line] = [e for e in errors if e.startswith(f"==> Error: {path} ")]
        assert CHANGED.search(line), line
    assert result.stdout.startswith(f"==> {directory / 'signed.app'}: signed by {SITE_UID}")


def test_expired_signature_and_revoked_key_fail_each_with_its_message(site, keys, images,
                                                                      tmp_path):
    """A signature that expires after a day (made here by gpg alone, into a copy of the
    signed image), checked by a keyring whose clock is three days ahead (gpg.conf's
    faked-system-time); the signed image checked by a keyring that has the key's
    revocation (the certificate spack gpg create left)."""
    home, site_key, public = keys
    directory, _ = images
    data = bytearray((directory / "signed.app").read_bytes())
    found = sections_by_readelf(directory / "signed.app")
    (sig_at, sig_size), (key_at, key_size) = found[".sha256_sig"], found[".sig_key"]
    zeroed = bytearray(data)
    zeroed[sig_at:key_at + key_size] = bytes(sig_size + key_size)
    (tmp_path / "digest").write_text(hashlib.sha256(zeroed).hexdigest())
    signature = gpg(home, "--local-user", site_key, "--default-sig-expire", "1d",
                    "--textmode", "--armor", "--detach-sign", "--output", "-",
                    str(tmp_path / "digest")).stdout
    data[sig_at:sig_at + sig_size] = signature + bytes(sig_size - len(signature))
    expiring = tmp_path / "expiring.app"
    expiring.write_bytes(data)
    revocation = tmp_path / "site.rev"
    with open(os.path.join(home, "openpgp-revocs.d", f"{site_key}.rev"), "rb") as f:
        revocation.write_bytes(f.read().replace(b":-----BEGIN", b"-----BEGIN"))
    with gnupg_home() as later, gnupg_home() as revoked:
        for verifier in (later, revoked):
            assert spack_in(site, verifier, "gpg", "trust", str(public)).returncode == 0
        with open(os.path.join(later, "gpg.conf"), "w") as f:
            f.write(f"faked-system-time {int(time.time()) + 3 * 86400}\n")
        gpg(revoked, "--import", str(revocation))
        late = verify(site, later, expiring)
        gone = verify(site, revoked, directory / "signed.app")
    assert (late.returncode, late.stderr) == (1, (
        f"==> Error: {expiring} is signed by {SITE_UID} (key {site_key}), but the signature "
        "has expired; ask the signer for a newly signed image\n"))
    assert (gone.returncode, gone.stderr) == (1, (
        f"==> Error: {directory / 'signed.app'} is signed by {SITE_UID} (key {site_key}), "
        "but the key was revoked; ask the signer for a newly signed image\n"))


def test_untrusted_and_unsigned_fail_each_with_its_message(site, keys, images, trusting):
    _, site_key, _ = keys
    directory, _ = images
    signed, unsigned = directory / "signed.app", directory / "unsigned.app"
    trusts, holds, lacks = trusting
    result = verify(site, trusts, unsigned)
    assert (result.returncode, result.stderr) == (1, (
        f"==> Error: {unsigned} is not signed; build it with spack appimage --sign\n"))
    result = verify(site, holds, signed)
    assert (result.returncode, result.stderr) == (1, (
        f"==> Error: {signed} is signed by {SITE_UID} (key {site_key}), a key Spack's "
        "keyring does not trust; if you trust the signer, get their public key and run "
        "spack gpg trust FILE\n"))
    result = verify(site, lacks, signed)
    assert (result.returncode, result.stderr) == (1, (
        f"==> Error: {signed} is signed by key {site_key} ({SITE_UID}, as the image says), "
        f"{NOT_IN_KEYRING}\n"))
    for path, cause in ((directory / "signed.json", "is not a readable ELF file"),
                        ("/bin/true", "has no .sha256_sig and .sig_key sections"),
                        (directory / "none.app", "cannot be read: No such file or directory")):
        result = verify(site, trusts, path)
        assert result.returncode == 1, result.stderr
        assert result.stderr.startswith(f"==> Error: {path} {cause}"), result.stderr


@pytest.fixture(scope="module")
def shared_spack(site, keys, tmp_path_factory):
    """A site's shared Spack as its users get it: a clone readable by all (with pyelftools
    for its Python and a package repository in its site scope), whose keyring (the Spack default, ``opt/spack/gpg``) trusts the site's
    key through ``spack gpg trust``, made readable as the README says."""
    _, _, public = keys
    with readable_tmp_dir("shared-spack-") as directory:
        spack_root = os.path.dirname(os.path.dirname(os.path.realpath(shutil.which("spack"))))
        clone = directory / "spack"
        subprocess.run(["git", "-c", "advice.detachedHead=false", "clone", "--quiet", "--shared", spack_root, str(clone)],
                       check=True)
        # Its site scope names a package repository its users can read (Spack's
        # default one, fetched into ~/.spack, would be missing for them).
        (clone / "etc" / "spack" / "repos.yaml").write_text(
            repos_config("appimage_test").replace("repos:", "repos::", 1))
        import elftools

        shutil.copytree(os.path.dirname(elftools.__file__), directory / "python" / "elftools")
        config = directory / "config"  # Spack's defaults, the extension added
        config.mkdir()
        (config / "config.yaml").write_text(f"config:\n  extensions:\n  - {EXTENSION}\n")
        env = dict(site.env_vars, SPACK_USER_CONFIG_PATH=str(config))
        env.pop("SPACK_GNUPGHOME", None)
        trusted = subprocess.run([str(clone / "bin" / "spack"), "gpg", "trust", str(public)],
                                 env=env, capture_output=True, text=True)
        assert trusted.returncode == 0, trusted.stderr
        keyring = clone / "opt" / "spack" / "gpg"
        os.chmod(keyring, 0o755)
        for name in ("pubring.kbx", "trustdb.gpg"):
            os.chmod(keyring / name, 0o644)
        subprocess.run(["chmod", "-R", "a+rX", str(directory / "python"), str(config)],
                       check=True)
        try:
            yield clone, config, directory / "python"
        finally:
            stop_gnupg(str(keyring))


def test_ordinary_user_verifies_with_the_sites_keyring_and_runs(shared_spack, keys, images,
                                                                ordinary_user):
    clone, config, python = shared_spack
    _, site_key, _ = keys
    directory, _ = images
    signed, unsigned = directory / "signed.app", directory / "unsigned.app"
    result = ordinary_user.run(
        [str(clone / "bin" / "spack"), "appimage", "--verify", str(signed), str(unsigned)],
        env={"SPACK_USER_CONFIG_PATH": str(config), "PYTHONPATH": str(python)})
    assert "Traceback" not in result.stderr
    assert result.returncode == 1, result.stderr
    assert result.stdout == (f"==> {signed}: signed by {SITE_UID} (key {site_key}), trusted "
                             "in Spack's keyring\n"), result.stderr
    assert result.stderr.endswith(
        f"==> Error: {unsigned} is not signed; build it with spack appimage --sign\n")
    run = ordinary_user.run([str(signed), "x"])
    assert run.returncode == 0 and "greeting=bonjour" in run.stdout, run.stderr


def refused(site, home, *args, variables=None, spack_options=()):
    """The one error line of a signed build that must fail before writing anything."""
    with readable_tmp_dir("refused-") as directory:
        result = site(*spack_options, "appimage", *ENTRY, "-o", str(directory / "x.app"), *args,
                      env=site.env, check=False,
                      variables={"SPACK_GNUPGHOME": home, **(variables or {})})
        assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
        errors = [line for line in result.stderr.splitlines() if "Error:" in line]
        assert len(errors) == 1, result.stderr
        assert "[3/" not in result.stdout  # nothing was staged
        assert os.listdir(directory) == []
        return errors[0]


def test_no_key_or_an_ambiguous_one_is_refused_first(site, keys, stub_runtime):
    home, site_key, _ = keys
    with gnupg_home() as empty:
        assert refused(site, empty, "--sign") == (
            f"==> Error: no signing key in Spack's keyring ({empty}); create one with spack "
            "gpg create NAME EMAIL, or import yours with spack gpg trust FILE (spack gpg list "
            "--signing lists them)")
    assert refused(site, home, "--sign", "nobody@example.org").startswith(
        "==> Error: no signing key named nobody@example.org in Spack's keyring (")
    second = fingerprints(home, "second@example.org")[0]
    assert refused(site, home, "--sign") == (
        f"==> Error: 2 signing keys in Spack's keyring ({', '.join(fingerprints(home))}); "
        "pass --sign with one of them")
    assert {site_key, second} == set(fingerprints(home))
    assert refused(site, home, "--sign", site_key, "--runtime", stub_runtime) == (
        f"==> Error: the runtime {stub_runtime} has no .sha256_sig and .sig_key sections to "
        "sign into; use the project's runtime (leave out --runtime) or AppImage/type2-runtime")
    assert refused(site, home, spack_options=("-c", "config:appimage:sign:3")) == (
        "==> Error: config:appimage:sign must be a boolean (true: sign with the one signing "
        "key of Spack's keyring) or the key to sign with (a fingerprint, key ID or e-mail), "
        "not 3; see config.yaml.example, or remove config:appimage:sign")


def test_signature_larger_than_its_section_is_refused(site):
    with gnupg_home() as home:
        key = quick_key(home, "Big <big@example.org>")
        with open(os.path.join(home, "gpg.conf"), "w") as f:
            f.write(f"sig-notation big@example.org={'x' * 1000}\n")
        line = refused(site, home, "--sign")
    assert re.fullmatch(
        rf"==> Error: a signature by {key} takes \d+ bytes, more than the image's 1023; sign "
        r"with an RSA key of at most 4096 bits or an ECC key \(spack gpg create makes one\), "
        r"without notations in gpg.conf", line), line


def test_key_with_a_passphrase_signs_only_with_it(site, tmp_path):
    """No passphrase, a wrong one: refused before anything is written; the right one in
    SPACK_APPIMAGE_SIGN_PASSPHRASE, with the key named by config:appimage:sign: signed. The
    agent caches no passphrase (max-cache-ttl 0), so each build asks for it anew; it ran
    before the build (gpg made the key), so the build leaves it running."""
    with gnupg_home() as home:
        with open(os.path.join(home, "gpg-agent.conf"), "w") as f:
            f.write("default-cache-ttl 0\nmax-cache-ttl 0\n")
        key = quick_key(home, "Protected <protected@example.org>", PASSPHRASE)
        assert refused(site, home, "--sign") == (
            f"==> Error: the signing key {key} needs its passphrase; set "
            "SPACK_APPIMAGE_SIGN_PASSPHRASE, or sign with a key without one (spack gpg create "
            "makes those)")
        assert refused(site, home, "--sign", variables={
            "SPACK_APPIMAGE_SIGN_PASSPHRASE": "wrong"}) == (
            f"==> Error: SPACK_APPIMAGE_SIGN_PASSPHRASE is not the passphrase of the signing "
            f"key {key}; set it to the key's passphrase")
        output = tmp_path / "p.app"
        built = site("-c", "config:appimage:sign:protected@example.org", "appimage", *ENTRY,
                     "-o", str(output), env=site.env, check=False,
                     variables={"SPACK_GNUPGHOME": home,
                                "SPACK_APPIMAGE_SIGN_PASSPHRASE": PASSPHRASE})
        assert built.returncode == 0, built.stderr
        assert agents_of(home) != []
        result = verify(site, home, output)  # gpg made the key: ultimately trusted there
    assert result.returncode == 0, result.stderr
    assert result.stdout == (f"==> {output}: signed by Protected <protected@example.org> "
                             f"(key {key}), trusted in Spack's keyring\n")
