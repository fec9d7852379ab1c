"""Re-save the shipped model files (``data/<system>/flow.pt``) with a SHA-256 checksum.

Model files written before checksums were stored hold their state directly; this script rewrites
each one in the checksummed layout of :func:`boltzflow.integrity.write_torch` (the same state
object, so configuration, metadata and every parameter and buffer stay bit-identical — the script
checks that by reading the new file back) and leaves files that already carry a checksum alone, so
rerunning it changes nothing.

Usage::

    python data/make_checksummed_models.py            # every data/*/flow.pt
    python data/make_checksummed_models.py FILE ...   # just these files
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path
from typing import Any

import torch

from boltzflow.integrity import ENVELOPE, UnverifiedFileWarning, read_torch, write_torch

HERE = Path(__file__).resolve().parent


def _bytes(t: torch.Tensor) -> torch.Tensor:
    """A tensor's raw bytes (so NaNs and signed zeros compare exactly)."""
    return t.detach().contiguous().reshape(-1).view(torch.uint8)


def identical(a: Any, b: Any) -> bool:
    """True when two loaded states are equal, tensors bit for bit (dtype, shape and values)."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype
                and a.shape == b.shape and torch.equal(_bytes(a), _bytes(b)))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(identical(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(identical(x, y) for x, y in zip(a, b))
    return a == b


def checksum(path: Path) -> str:
    """Rewrite one model file with a checksum; return what was done."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and state.get("envelope") == ENVELOPE:
        return "already checksummed"
    write_torch(path, state)
    if not identical(read_torch(path, "model file", "restore it from git"), state):
        raise RuntimeError(f"{path}: the re-saved state differs from the original")
    return "re-saved with a checksum (state bit-identical)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*", type=Path, help="model files (default: every data/*/flow.pt)")
    files = parser.parse_args().files or sorted(HERE.glob("*/flow.pt"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnverifiedFileWarning)
        for path in files:
            print(f"{path}: {checksum(path)}")


if __name__ == "__main__":
    main()
