"""Resumable, checksum-verified downloads shared by CLIP weights and dataset archives.

A file reaches its destination only complete and verified: bytes go to ``<destination>.part`` (resumed
with an HTTP Range request when the server allows it), and are renamed once the SHA256 matches.
"""
import hashlib
import os
import urllib.error
import urllib.request

from tqdm import tqdm

CHUNK = 1 << 20


class DownloadError(RuntimeError):
    """The network, the server or the checksum said no; the message says what to do instead."""


def sha256_of(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _open(url, start, timeout):
    request = urllib.request.Request(url, headers={"User-Agent": "mupl-downloader"})
    if start:
        request.add_header("Range", f"bytes={start}-")
    return urllib.request.urlopen(request, timeout=timeout)


def download_file(url, destination, sha256=None, desc=None, timeout=30):
    """Fetch ``url`` to ``destination`` unless a verified copy is already there; return the path."""
    if os.path.isfile(destination):
        if sha256 is None or sha256_of(destination) == sha256:
            return destination
        print(f"Warning: {destination} does not match its SHA256 checksum; downloading it again")
    os.makedirs(os.path.dirname(os.path.abspath(destination)), exist_ok=True)
    part = destination + ".part"
    start = os.path.getsize(part) if os.path.isfile(part) else 0
    try:
        response = _open(url, start, timeout)
    except urllib.error.HTTPError as error:
        if error.code != 416 or not start:  # 416: the partial file is already complete
            raise DownloadError(_advice(url, destination, f"HTTP {error.code} {error.reason}")) from error
        response = None
    except (urllib.error.URLError, OSError) as error:
        raise DownloadError(_advice(url, destination, str(getattr(error, "reason", error)))) from error

    if response is not None:
        with response:
            resumed = start and response.status == 206
            if not resumed:
                start = 0
            total = response.headers.get("Content-Length")
            total = int(total) + start if total is not None else None
            try:
                with open(part, "ab" if resumed else "wb") as handle, tqdm(
                    total=total, initial=start, unit="B", unit_scale=True, unit_divisor=1024,
                    desc=desc or os.path.basename(destination),
                ) as bar:
                    for block in iter(lambda: response.read(CHUNK), b""):
                        handle.write(block)
                        bar.update(len(block))
            except OSError as error:
                raise DownloadError(
                    _advice(url, destination, f"interrupted ({error}); run again to resume")
                ) from error

    if sha256 is not None:
        actual = sha256_of(part)
        if actual != sha256:
            os.remove(part)
            raise DownloadError(
                f"{url} downloaded with SHA256 {actual}, expected {sha256}; the partial file was "
                f"removed. Try again, or fetch the file by hand and put it at {destination}"
            )
    os.replace(part, destination)
    return destination


def _advice(url, destination, reason):
    return (f"Could not download {url} ({reason}). On an offline machine, fetch that file elsewhere "
            f"and put it at {destination}")
