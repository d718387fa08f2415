"""Where a pretrained model comes from: `model.name_or_path` as a hub id or a local folder (used as it is), a `.gguf`
file, or `package:<module>/<file>`, a file shipped inside an installed Python package (so a profile needs no
machine path).

A GGUF checkpoint is materialised once into a plain safetensors folder (dequantised float32 weights, the tokenizer
and its chat template, the config without GGUF's quantization_config, which would stop the Trainer from training
it) in the cache, keyed by the file's sha256: a re-run, or another project on the machine, loads the folder without
converting again. The cache is $REWARDFLOW_CACHE_DIR, else ~/.cache/rewardflow.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

log = logging.getLogger(__name__)

PACKAGE_PREFIX = "package:"
GGUF_SUFFIX = ".gguf"
CACHE_ENV = "REWARDFLOW_CACHE_DIR"
# written last into a materialised folder: a folder without it is a conversion that did not finish
SOURCE_MARKER = "rewardflow_gguf_source.json"


class ModelSourceError(ValueError):
    """model.name_or_path names something that cannot be loaded; the message says what and what to do."""


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "rewardflow")


def package_file(spec: str) -> Path:
    """The file `package:<module>/<relative path>` names, found without importing the package (importing may need
    dependencies the file does not)."""
    module, _, relative = spec.removeprefix(PACKAGE_PREFIX).partition("/")
    if not module or not relative:
        raise ModelSourceError(f"model.name_or_path {spec!r}: expected package:<module>/<file inside it>")
    try:
        found = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        found = None
    locations = list(found.submodule_search_locations or []) if found else []
    if not locations:
        raise ModelSourceError(
            f"model.name_or_path {spec!r}: no installed package {module!r}. For the SmolLM2 profile run "
            "`make install-smollm2` (README: 'A real pretrained model')"
        )
    for folder in locations:
        if (Path(folder) / relative).is_file():
            return Path(folder) / relative
    raise ModelSourceError(f"model.name_or_path {spec!r}: the package {module!r} has no file {relative!r}")


def sha256_of(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _check_gguf(path: Path) -> str:
    """The architecture of a readable GGUF file that transformers can dequantise; a clear error otherwise."""
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    what_to_do = "re-install the package or download the file again (it is corrupt or truncated)"
    try:
        parsed = load_gguf_checkpoint(str(path), return_tensors=False)
    except ImportError as err:
        raise ModelSourceError(f"{path}: loading GGUF needs the gguf package: pip install gguf ({err})") from None
    except ValueError as err:
        if "not supported" in str(err):
            raise ModelSourceError(
                f"{path}: {err} transformers cannot dequantise this architecture; convert the model to a safetensors "
                "folder with its own tools and set model.name_or_path to that folder"
            ) from None
        raise ModelSourceError(f"{path}: not a readable GGUF file ({err}); {what_to_do}") from None
    except Exception as err:  # the gguf reader raises whatever numpy/struct/mmap raise on a bad file
        problem = f"{type(err).__name__}: {err}"
        raise ModelSourceError(f"{path}: not a readable GGUF file ({problem}); {what_to_do}") from None
    return str(parsed["config"].get("model_type", "?"))


def _convert(path: Path, out: Path) -> None:
    """Dequantise the GGUF checkpoint and save it as a plain safetensors folder with its tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    loaded = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    config = loaded.config
    # the GGUF quantization_config describes the file, not these float weights, and makes the Trainer refuse them
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    del loaded
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


def materialise_gguf(path: str | Path) -> Path:
    """The cached safetensors folder of a GGUF file, converted on first use."""
    path = Path(path)
    if not path.is_file():
        raise ModelSourceError(f"model.name_or_path {str(path)!r}: no such GGUF file")
    digest = sha256_of(path)
    target = cache_dir() / "gguf" / digest[:16]
    if (target / SOURCE_MARKER).is_file():
        log.info("model %s: using its safetensors copy %s", path.name, target)
        return target
    architecture = _check_gguf(path)
    started = time.monotonic()
    log.info("model %s (%s): dequantising to a safetensors folder in %s, once", path.name, architecture, target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        _convert(path, tmp)
        marker = {"file": path.name, "sha256": digest, "architecture": architecture}
        (tmp / SOURCE_MARKER).write_text(json.dumps(marker, indent=1) + "\n")
        shutil.rmtree(target, ignore_errors=True)  # an unfinished conversion (no marker)
        try:
            os.replace(tmp, target)
        except OSError:
            if not (target / SOURCE_MARKER).is_file():  # not another process finishing first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("model %s: materialised in %.1fs", path.name, time.monotonic() - started)
    return target


def resolve_source(name_or_path: str) -> str:
    """What from_pretrained loads for model.name_or_path: a folder or hub id as it is, a GGUF file's cached
    safetensors folder."""
    path = package_file(name_or_path) if name_or_path.startswith(PACKAGE_PREFIX) else Path(name_or_path)
    if path.suffix == GGUF_SUFFIX:
        return str(materialise_gguf(path))
    return str(path) if name_or_path.startswith(PACKAGE_PREFIX) else name_or_path
