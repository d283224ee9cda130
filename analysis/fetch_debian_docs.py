"""English text that installs offline: Debian's documentation packages as a folder of .txt files.

    python analysis/fetch_debian_docs.py [--out DIR] [--packages python3.11-doc linux-doc-6.1]

`apt-get download` fetches each package's .deb from the machine's package mirror (no system install,
no root needed beyond a writable directory) and `dpkg-deb -x` unpacks it; every reStructuredText or
plain-text source inside (`.rst`, `.rst.gz`, `.txt`, `.txt.gz`; Python's are its `html/_sources`)
becomes one document. The folder is what `--dataset DIR` reads (one document per .txt file). Measured
2026-12-02: python3.11-doc (12.6 MB .deb) and linux-doc-6.1 (37 MB) give about 35 MB of text.
Skips work already done: a package whose documents are written is not fetched again.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import subprocess
import sys
import tempfile
from pathlib import Path

DEFAULT_OUT = Path.home() / ".cache" / "saekit" / "text" / "debian-docs"
DEFAULT_PACKAGES = ["python3.11-doc", "linux-doc-6.1"]
SUFFIXES = (".rst", ".rst.gz", ".txt", ".txt.gz")
MIN_CHARS = 200


def _read_text(path: Path) -> str:
    data = path.read_bytes()
    if path.name.endswith(".gz"):
        data = gzip.decompress(data)
    return data.decode("utf-8", errors="replace")


def package_documents(root: Path) -> list[Path]:
    """The text sources under an unpacked package, sorted (a fixed document order)."""
    return sorted(p for p in root.rglob("*") if p.is_file() and p.name.endswith(SUFFIXES)
                  and "/licenses/" not in str(p) and p.name not in ("copyright", "changelog.txt"))


def fetch_package(name: str, out: Path) -> int:
    """Download, unpack and write `name`'s documents under out/NAME/; returns how many were written."""
    target = out / name
    done = target / ".complete"
    if done.exists():
        return int(done.read_text())
    with tempfile.TemporaryDirectory() as tmp:
        result = subprocess.run(["apt-get", "download", name], cwd=tmp, capture_output=True, text=True)
        debs = list(Path(tmp).glob(f"{name}_*.deb"))
        if not debs:
            raise RuntimeError(f"apt-get download {name} fetched nothing: {result.stderr.strip()[-500:]}")
        subprocess.run(["dpkg-deb", "-x", str(debs[0]), str(Path(tmp) / "x")], check=True)
        target.mkdir(parents=True, exist_ok=True)
        written, seen = 0, set()
        for path in package_documents(Path(tmp) / "x"):
            text = _read_text(path)
            digest = hashlib.sha1(text.encode()).digest()
            if len(text) < MIN_CHARS or digest in seen:  # duplicates would repeat contexts
                continue
            seen.add(digest)
            rel = str(path.relative_to(Path(tmp) / "x"))
            stem = hashlib.sha1(rel.encode()).hexdigest()[:12]
            (target / f"{written:05d}-{stem}.txt").write_text(text, encoding="utf-8")
            written += 1
    done.write_text(str(written))
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--packages", nargs="+", default=DEFAULT_PACKAGES)
    args = parser.parse_args(argv)
    for name in args.packages:
        n = fetch_package(name, args.out)
        print(f"[fetch] {name}: {n} documents in {args.out / name}")
    size = sum(p.stat().st_size for p in args.out.rglob("*.txt"))
    print(f"[fetch] {args.out}: {size / 1e6:.1f} MB of text")
    return 0


if __name__ == "__main__":
    sys.exit(main())
