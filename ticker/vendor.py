"""Pinned htmx and htmx SSE-extension versions, and the tool that vendors them.

They are the only JavaScript the app may serve: copied byte for byte from npm tarballs into
static/vendor/ with their licences; vendor.json records each file's origin and SHA-256.

Re-vendor (needs npm): python -m ticker.vendor    Verify offline: python -m ticker.vendor --check
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import json
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any


@dataclass(frozen=True)
class Pin:
    """One npm package to vendor: an exact ``name@version`` and the file to take from it."""

    spec: str
    # Paths inside the tarball, in order of preference; the first one present is vendored
    # under its upstream file name.
    sources: tuple[str, ...]


PINS: tuple[Pin, ...] = (
    Pin("htmx.org@2.0.11", ("package/dist/htmx.min.js",)),
    # htmx 2's SSE extension ships as its own package. htmx.org/dist/ext/sse.js is the
    # htmx 1 extension and must not be used.
    Pin("htmx-ext-sse@2.2.4", ("package/dist/sse.min.js", "package/dist/sse.js")),
)

ROOT = Path(__file__).resolve().parent.parent
VENDOR_DIR = PurePosixPath("static/vendor")
MANIFEST = VENDOR_DIR / "vendor.json"

_LICENCE_NAME = re.compile(r"package/(LICEN[CS]E|COPYING)(\.(md|txt))?", re.IGNORECASE)
_SRI_ALGORITHMS = ("sha512", "sha384", "sha256")


class VendorError(Exception):
    """Vendoring or checking cannot proceed; the message says why."""


def sha256_file(path: Path) -> str:
    """Return the SHA-256 hex digest of the file at ``path``."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load_manifest(root: Path = ROOT) -> dict[str, Any]:
    """Read and return static/vendor/vendor.json under ``root``."""
    path = root / MANIFEST
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise VendorError(
            f"{MANIFEST} does not exist; run `python -m ticker.vendor`"
        ) from None
    except json.JSONDecodeError as exc:
        raise VendorError(f"{MANIFEST} is not valid JSON: {exc}") from None


def listed_files(manifest: dict[str, Any]) -> list[dict[str, str]]:
    """Return every file entry (``path``, ``from``, ``sha256``) of every package in ``manifest``."""
    return [
        entry
        for package in manifest.get("packages", [])
        for entry in package.get("files", [])
    ]


def check(root: Path = ROOT) -> list[str]:
    """Verify every file in the manifest exists and matches its SHA-256; return the problems."""
    try:
        manifest = load_manifest(root)
    except VendorError as exc:
        return [str(exc)]
    entries = listed_files(manifest)
    if not entries:
        return [f"{MANIFEST} lists no files"]
    problems = []
    for entry in entries:
        rel = PurePosixPath(entry["path"])
        if rel.is_absolute() or ".." in rel.parts or VENDOR_DIR not in rel.parents:
            problems.append(f"{rel}: path is not inside {VENDOR_DIR}/")
            continue
        path = root / rel
        if not path.is_file():
            problems.append(f"{rel}: missing")
        elif (actual := sha256_file(path)) != entry["sha256"]:
            problems.append(
                f"{rel}: SHA-256 is {actual}, vendor.json records {entry['sha256']}"
            )
    return problems


def verify_integrity(data: bytes, integrity: str) -> None:
    """Raise VendorError unless ``data`` matches the npm/SRI ``integrity`` string."""
    hashes = [token.split("-", 1) for token in integrity.split() if "-" in token]
    usable = [(alg, b64) for alg, b64 in hashes if alg in _SRI_ALGORITHMS]
    if not usable:
        raise VendorError(f"no usable hash in integrity {integrity!r}")
    for alg, expected in usable:
        actual = base64.b64encode(hashlib.new(alg, data).digest()).decode("ascii")
        if actual != expected.split("?", 1)[0]:
            raise VendorError(f"tarball {alg} is {actual}, npm reports {expected}")


def npm_pack(spec: str, workdir: Path) -> tuple[bytes, str]:
    """Download ``spec`` with ``npm pack`` into ``workdir``; return the tarball and its integrity."""
    npm = shutil.which("npm")
    if npm is None:
        raise VendorError("npm is not on PATH")
    result = subprocess.run(
        [
            npm,
            "pack",
            spec,
            "--json",
            "--ignore-scripts",
            "--pack-destination",
            str(workdir),
        ],
        cwd=workdir,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise VendorError(f"`npm pack {spec}` failed:\n{result.stderr.strip()}")
    try:
        (info,) = json.loads(result.stdout)
    except ValueError:
        raise VendorError(
            f"unexpected `npm pack {spec} --json` output:\n{result.stdout}"
        ) from None
    data = (workdir / info["filename"]).read_bytes()
    verify_integrity(data, info["integrity"])
    return data, info["integrity"]


def _read_member(tar: tarfile.TarFile, name: str) -> bytes:
    member = tar.getmember(name)
    if not member.isfile():
        raise VendorError(f"{name} is not a regular file in the tarball")
    extracted = tar.extractfile(member)
    assert extracted is not None
    return extracted.read()


def _safe_name(package: str) -> str:
    return package.lstrip("@").replace("/", "-")


def _fetch(pin: Pin, workdir: Path) -> tuple[dict[str, Any], dict[str, bytes]]:
    """Return one package's manifest entry and the files to write (repo-relative path -> bytes)."""
    tarball, integrity = npm_pack(pin.spec, workdir)
    name, _, version = pin.spec.rpartition("@")
    with tarfile.open(fileobj=io.BytesIO(tarball), mode="r:gz") as tar:
        members = set(tar.getnames())
        package_json = json.loads(_read_member(tar, "package/package.json"))
        if (package_json.get("name"), package_json.get("version")) != (name, version):
            raise VendorError(
                f"{pin.spec}: tarball is {package_json.get('name')}@{package_json.get('version')}"
            )
        source = next((s for s in pin.sources if s in members), None)
        if source is None:
            raise VendorError(
                f"{pin.spec}: none of {', '.join(pin.sources)} is in the tarball"
            )
        picked = {source: VENDOR_DIR / PurePosixPath(source).name}
        licences = sorted(m for m in members if _LICENCE_NAME.fullmatch(m))
        if licences:
            picked[licences[0]] = VENDOR_DIR / f"LICENSE.{_safe_name(name)}"
        contents = {str(dest): _read_member(tar, src) for src, dest in picked.items()}

    entry: dict[str, Any] = {
        "spec": pin.spec,
        "name": name,
        "version": version,
        "integrity": integrity,
        "license": package_json.get("license"),
    }
    if not licences:
        entry["license_note"] = (
            f'the tarball has no LICENSE file; package.json says "license": '
            f"{json.dumps(package_json.get('license'))}"
        )
    elif package_json.get("license") is None:
        text = contents[str(picked[licences[0]])].decode("utf-8", "replace").strip()
        title = text.splitlines()[0].strip() if text else ""
        entry["license_note"] = (
            f'package.json has no "license" field; the licence is the tarball\'s '
            f"{licences[0]} ({title!r})"
        )
    entry["files"] = [
        {
            "path": str(dest),
            "from": src,
            "sha256": hashlib.sha256(contents[str(dest)]).hexdigest(),
        }
        for src, dest in picked.items()
    ]
    return entry, contents


def vendor(root: Path = ROOT, pins: tuple[Pin, ...] = PINS) -> dict[str, Any]:
    """Download every pin, write its files and licence to static/vendor/, rewrite vendor.json."""
    try:
        old = load_manifest(root)
    except VendorError:
        old = {}
    recorded = {p["spec"]: p["integrity"] for p in old.get("packages", [])}

    packages, files = [], {}
    with tempfile.TemporaryDirectory(prefix="ticker-vendor-") as tmp:
        for pin in pins:  # fetch everything before writing anything
            entry, contents = _fetch(pin, Path(tmp))
            if recorded.get(pin.spec, entry["integrity"]) != entry["integrity"]:
                raise VendorError(
                    f"{pin.spec}: npm now serves integrity {entry['integrity']}, but "
                    f"vendor.json recorded {recorded[pin.spec]} for the same version"
                )
            packages.append(entry)
            files.update(contents)

    (root / VENDOR_DIR).mkdir(parents=True, exist_ok=True)
    for rel, data in files.items():
        (root / rel).write_bytes(data)
    for entry in listed_files(
        old
    ):  # drop files an older manifest vendored that are gone now
        rel = PurePosixPath(entry["path"])
        if rel.parent == VENDOR_DIR and str(rel) not in files:
            (root / rel).unlink(missing_ok=True)

    manifest = {
        "comment": (
            "Written by `python -m ticker.vendor`; verify with `python -m ticker.vendor --check`. "
            "Paths are relative to the repository root; 'from' is the path inside the npm tarball."
        ),
        "packages": packages,
    }
    (root / MANIFEST).write_text(
        json.dumps(manifest, indent=2) + "\n", encoding="utf-8"
    )
    return manifest


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the process exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m ticker.vendor", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="no network: verify every file in vendor.json exists and matches its SHA-256",
    )
    args = parser.parse_args(argv)
    if args.check:
        problems = check()
        if problems:
            print(
                f"{MANIFEST} check FAILED:",
                *(f"  {p}" for p in problems),
                sep="\n",
                file=sys.stderr,
            )
            print("Re-vendor with `python -m ticker.vendor`.", file=sys.stderr)
            return 1
        print(f"OK: {len(listed_files(load_manifest()))} files match {MANIFEST}")
        return 0
    try:
        manifest = vendor()
    except VendorError as exc:
        print(f"vendoring failed: {exc}", file=sys.stderr)
        return 1
    for package in manifest["packages"]:
        for entry in package["files"]:
            print(
                f"{package['spec']}: {entry['from']} -> {entry['path']}  sha256 {entry['sha256']}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
