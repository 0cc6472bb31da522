"""Loading and saving ParakeetTDT checkpoints.

`load(source)` accepts:
- a NeMo `.nemo` archive (tar: model_config.yaml, model_weights.ckpt, SentencePiece model),
- a transformers `ParakeetForTDT` folder (config.json + model.safetensors + tokenizer.json),
- a folder written by `save` (the transformers layout plus `parakeet_ray.json`, our full config),
each from a local path or any fsspec URI (s3://, gs://, ...), or a Hugging Face hub id.

`save(model, folder)` writes the transformers layout, so `ParakeetForTDT.from_pretrained(folder)`
loads it too. Weights are read only with safetensors or `torch.load(weights_only=True)`.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tarfile
import tempfile
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import load_file, save_file

from .config import ConfigError, ModelConfig
from .config_convert import config_from_hf, config_from_nemo, config_to_hf, preprocessor_to_hf
from .parakeet import ParakeetTDT
from .tokenizer import Tokenizer

OUR_CONFIG = "parakeet_ray.json"
HF_WEIGHTS = "model.safetensors"


class CheckpointError(RuntimeError):
    """A checkpoint could not be read; the message names the path and the reason."""


# ---- parameter names -----------------------------------------------------------------------
# Our module names equal transformers' except for the predictor / joint projections.
_OURS_TO_HF = [
    (r"^predictor\.embedding\.", "decoder.embedding."),
    (r"^predictor\.lstm\.", "decoder.lstm."),
    (r"^joint\.pred_proj\.", "decoder.decoder_projector."),
    (r"^joint\.enc_proj\.", "encoder_projector."),
]
_NEMO_TO_OURS = [
    (r"^encoder\.pre_encode\.conv\.", "encoder.subsampling.layers."),
    (r"^encoder\.pre_encode\.out\.", "encoder.subsampling.linear."),
    (r"\.self_attn\.linear_q\.", ".self_attn.q_proj."),
    (r"\.self_attn\.linear_k\.", ".self_attn.k_proj."),
    (r"\.self_attn\.linear_v\.", ".self_attn.v_proj."),
    (r"\.self_attn\.linear_out\.", ".self_attn.o_proj."),
    (r"\.self_attn\.linear_pos\.", ".self_attn.relative_k_proj."),
    (r"\.self_attn\.pos_bias_u$", ".self_attn.bias_u"),
    (r"\.self_attn\.pos_bias_v$", ".self_attn.bias_v"),
    (r"\.conv\.batch_norm\.", ".conv.norm."),
    (r"^decoder\.prediction\.embed\.", "predictor.embedding."),
    (r"^decoder\.prediction\.dec_rnn\.lstm\.", "predictor.lstm."),
    (r"^joint\.pred\.", "joint.pred_proj."),
    (r"^joint\.enc\.", "joint.enc_proj."),
    (r"^joint\.joint_net\.\d+\.", "joint.head."),  # [ReLU, (Dropout,) Linear]: index 1 or 2
]
# Not loaded: buffers we recompute (window, filterbank, positional tables), training-only modules, and
# a hybrid TDT-CTC model's CTC head (`ctc_decoder.*`: transcription decodes with the TDT head).
_NEMO_SKIP = (r"^preprocessor\.", r"^encoder\.pos_enc\.", r"^loss\.", r"^wer\.", r"^ctc_wer\.", r"^ctc_loss\.",
              r"^spec_augment", r"^ctc_decoder\.")


def _rename(state: dict[str, torch.Tensor], rules: list[tuple[str, str]]) -> dict[str, torch.Tensor]:
    """Apply the first matching (pattern, replacement) rule to each key."""
    out = {}
    for key, value in state.items():
        for a, b in rules:
            new = re.sub(a, b, key)
            if new != key:
                key = new
                break
        out[key] = value
    return out


def ours_to_hf(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return _rename(state, _OURS_TO_HF)


def hf_to_ours(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    rules = [("^" + re.escape(hf), ours.lstrip("^").replace("\\", "")) for ours, hf in _OURS_TO_HF]
    return _rename(state, rules)


def nemo_to_ours(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    state = {k: v for k, v in state.items() if not any(re.match(p, k) for p in _NEMO_SKIP)}
    return _rename(state, _NEMO_TO_OURS)


def _load_state(model: ParakeetTDT, state: dict[str, torch.Tensor], source: str) -> None:
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{source}: weights do not match the config (missing {missing[:5]}, unexpected {unexpected[:5]})")


# ---- loading -------------------------------------------------------------------------------
def load(source: str | os.PathLike, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> ParakeetTDT:
    """Load a model from a .nemo file, a transformers/our folder, an fsspec URI or a hub id (eval mode)."""
    source = os.fspath(source)
    if "://" in source and not source.startswith("file://"):
        with tempfile.TemporaryDirectory(prefix="parakeet-ckpt-") as tmp:
            model = _load_local(_fetch_remote(source, Path(tmp)), label=source)
    else:
        path = _local_path(source)
        model = _load_local(path if path is not None else _fetch_hub(source), label=source)
    if dtype is not None:
        model = model.to(dtype=dtype)
    if device is not None:
        model = model.to(device)
    return model.eval()


def checkpoint_bytes(source: str | os.PathLike) -> int | None:
    """The stored size of the checkpoint `load(source)` would read, without reading it: a local file or folder's
    bytes, an fsspec URI's (`du`), or a hub repo's files (its local cache, else the hub's file list). None when
    it cannot be told (no such path, no network): a size for planning, not a check."""
    source = os.fspath(source)
    try:
        if "://" in source and not source.startswith("file://"):
            import fsspec

            fs, root = fsspec.core.url_to_fs(source)
            return int(fs.du(root, total=True)) or None
        path = _local_path(source)  # load()'s own rule: an existing path, or a hub id (None); else it raises
        if path is not None:
            return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
        from huggingface_hub import HfApi, scan_cache_dir

        try:
            cached = [r for r in scan_cache_dir().repos if r.repo_id == source and r.repo_type == "model"]
        except Exception:  # no cache folder yet
            cached = []
        if cached:
            return max(r.size_on_disk for r in cached[0].revisions)
        info = HfApi().model_info(source, files_metadata=True, timeout=10)
        return sum(f.size or 0 for f in info.siblings or []) or None
    except Exception:  # no such path, no network: planning goes on with a default size; load() names the problem
        return None


def _local_path(source: str) -> Path | None:
    """An existing local path for `source` (no fsspec protocol), or None when it names a hub repo."""
    path = Path(source.removeprefix("file://"))
    if path.exists():
        return path
    if re.fullmatch(r"[\w.-]+/[\w.-]+", source) and not source.startswith((".", "/")):
        return None
    raise CheckpointError(f"{source}: no such file or folder")


def _checkpoint_in(path: Path, label: str) -> tuple[str, Path]:
    """What a local path holds: ("folder", path) with a config, or ("nemo", archive)."""
    if path.is_dir():
        if (path / OUR_CONFIG).exists() or (path / "config.json").exists():
            return "folder", path
        nemos = sorted(path.glob("*.nemo"))
        if len(nemos) == 1:
            return "nemo", nemos[0]
        raise CheckpointError(f"{label}: folder has no config.json / {OUR_CONFIG} and no single .nemo file")
    if tarfile.is_tarfile(path):
        return "nemo", path
    raise CheckpointError(f"{label}: not a .nemo archive (tar) nor a checkpoint folder")


def _fetch_remote(uri: str, tmp: Path) -> Path:
    import fsspec

    try:
        fs, root = fsspec.core.url_to_fs(uri)
        if fs.isdir(root):
            fs.get(root.rstrip("/") + "/", str(tmp / "ckpt") + "/", recursive=True)
            return tmp / "ckpt"
        if not fs.exists(root):
            raise CheckpointError(f"{uri}: no such object")
        dest = tmp / Path(root).name
        fs.get(root, str(dest))
        return dest
    except CheckpointError:
        raise
    except Exception as e:  # fsspec backends raise many types; name the URI
        raise CheckpointError(f"{uri}: cannot fetch checkpoint ({type(e).__name__}: {e})") from e


def _fetch_hub(repo_id: str) -> Path:
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id))
    except Exception as e:
        raise CheckpointError(f"{repo_id}: not a local path, and the hub download failed ({type(e).__name__}: {e})") from e


def _load_local(path: Path, label: str) -> ParakeetTDT:
    kind, found = _checkpoint_in(path, label)
    return _load_folder(found, label) if kind == "folder" else _load_nemo(found, label)


def _read_json(path: Path, label: str) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{label}: cannot read {path.name} ({e})") from e


def _folder_config(folder: Path, label: str) -> ModelConfig:
    """Our parakeet_ray.json, else transformers' config.json (+ preprocessor_config.json)."""
    if (folder / OUR_CONFIG).exists():
        return ModelConfig.from_dict(_read_json(folder / OUR_CONFIG, label))
    pre = _read_json(folder / "preprocessor_config.json", label) if (folder / "preprocessor_config.json").exists() else None
    return config_from_hf(_read_json(folder / "config.json", label), pre)


def _load_folder(folder: Path, label: str) -> ParakeetTDT:
    config = _folder_config(folder, label)
    weights = folder / HF_WEIGHTS
    if not weights.exists():
        raise CheckpointError(f"{label}: {HF_WEIGHTS} is missing")
    try:
        state = load_file(str(weights))
    except Exception as e:
        raise CheckpointError(f"{label}: cannot read {HF_WEIGHTS} ({e})") from e
    try:
        tokenizer = Tokenizer.from_folder(folder)
    except FileNotFoundError:
        tokenizer = None
    model = ParakeetTDT(config, tokenizer)
    _load_state(model, hf_to_ours(state), label)
    return model


def _safe_members(tar: tarfile.TarFile, label: str) -> list[tarfile.TarInfo]:
    members = []
    for m in tar.getmembers():
        name = os.path.normpath(m.name)
        if m.isdir():
            continue
        if not m.isfile() or os.path.isabs(name) or name.startswith(".."):
            raise CheckpointError(f"{label}: unsafe archive member {m.name!r} (links and paths outside are refused)")
        members.append(m)
    return members


def _load_nemo(path: Path, label: str) -> ParakeetTDT:
    try:
        with tarfile.open(path) as tar, tempfile.TemporaryDirectory(prefix="parakeet-nemo-") as tmp:
            files = {}
            for m in _safe_members(tar, label):
                dest = Path(tmp) / os.path.basename(os.path.normpath(m.name))
                with tar.extractfile(m) as src, open(dest, "wb") as out:
                    shutil.copyfileobj(src, out)
                files[dest.name] = dest
            return _build_from_nemo_files(files, label)
    except (tarfile.TarError, EOFError, OSError) as e:
        raise CheckpointError(f"{label}: unreadable .nemo archive ({e})") from e


def _build_from_nemo_files(files: dict[str, Path], label: str) -> ParakeetTDT:
    if "model_config.yaml" not in files or "model_weights.ckpt" not in files:
        raise CheckpointError(f"{label}: .nemo archive lacks model_config.yaml or model_weights.ckpt")
    try:
        cfg = yaml.safe_load(files["model_config.yaml"].read_text())
    except yaml.YAMLError as e:
        raise CheckpointError(f"{label}: bad model_config.yaml ({e})") from e
    config = config_from_nemo(cfg)
    tok_path = str((cfg.get("tokenizer") or {}).get("model_path") or "")
    tok_name = os.path.basename(tok_path.removeprefix("nemo:"))
    if tok_name not in files:
        candidates = [n for n in files if n.endswith("tokenizer.model")]
        if len(candidates) != 1:
            raise CheckpointError(f"{label}: SentencePiece tokenizer {tok_name!r} not found in the archive")
        tok_name = candidates[0]
    tokenizer = Tokenizer(spm_path=files[tok_name])
    state = torch.load(files["model_weights.ckpt"], map_location="cpu", weights_only=True)
    model = ParakeetTDT(config, tokenizer)  # the tokenizer keeps its bytes: the temporary folder may go
    _load_state(model, nemo_to_ours(state), label)
    return model


# ---- inspecting (no weights) ----------------------------------------------------------------
def inspect(source: str | os.PathLike) -> ModelConfig | None:
    """Resolve `source` and read its config without loading weights: what a job's driver checks before
    it starts a cluster. Raises CheckpointError / ConfigError naming the problem (no such path, object or
    hub repo; no config; an unsupported option; no tokenizer, so no text). None: a hub repo holding one
    .nemo that is not in the local cache yet (it exists; the actors download it)."""
    source = os.fspath(source)
    if "://" in source and not source.startswith("file://"):
        return _inspect_remote(source)
    path = _local_path(source)
    if path is None:
        return _inspect_hub(source)
    kind, found = _checkpoint_in(path, source)
    if kind == "folder":
        return _inspect_folder(found, source)
    with open(found, "rb") as f:
        return _inspect_nemo(f, source)


def _inspect_folder(folder: Path, label: str) -> ModelConfig:
    config = _folder_config(folder, label)
    if not (folder / HF_WEIGHTS).exists():
        raise CheckpointError(f"{label}: {HF_WEIGHTS} is missing")
    if not any((folder / name).exists() for name in ("tokenizer.model", "tokenizer.json")):
        raise CheckpointError(f"{label}: no tokenizer (tokenizer.model or tokenizer.json): it cannot produce text")
    return config


def _inspect_nemo(fileobj, label: str) -> ModelConfig:
    """Stream the archive's members (no extraction, no weights read) for model_config.yaml and a tokenizer."""
    cfg, names = None, []
    try:
        with tarfile.open(fileobj=fileobj, mode="r|*") as tar:
            for m in tar:
                names.append(os.path.basename(os.path.normpath(m.name)))
                if names[-1] == "model_config.yaml" and m.isfile():
                    cfg = yaml.safe_load(tar.extractfile(m).read().decode())
    except (tarfile.TarError, EOFError, OSError, yaml.YAMLError) as e:
        raise CheckpointError(f"{label}: unreadable .nemo archive ({e})") from e
    if cfg is None or "model_weights.ckpt" not in names:
        raise CheckpointError(f"{label}: .nemo archive lacks model_config.yaml or model_weights.ckpt")
    config = config_from_nemo(cfg)
    if not any(n.endswith("tokenizer.model") for n in names):
        raise CheckpointError(f"{label}: no SentencePiece tokenizer in the archive: it cannot produce text")
    return config


def _inspect_remote(uri: str) -> ModelConfig:
    import fsspec

    try:
        fs, root = fsspec.core.url_to_fs(uri)
        if fs.isdir(root):
            with tempfile.TemporaryDirectory(prefix="parakeet-inspect-") as tmp:
                names = {p.rsplit("/", 1)[-1] for p in fs.ls(root, detail=False)}
                nemos = sorted(n for n in names if n.endswith(".nemo"))
                if not ({OUR_CONFIG, "config.json"} & names) and len(nemos) == 1:
                    with fs.open(root.rstrip("/") + "/" + nemos[0], "rb") as f:
                        return _inspect_nemo(f, uri)
                for name in names & {OUR_CONFIG, "config.json", "preprocessor_config.json"}:
                    fs.get(root.rstrip("/") + "/" + name, str(Path(tmp) / name))
                for name in names & {HF_WEIGHTS, "tokenizer.model", "tokenizer.json"}:
                    (Path(tmp) / name).touch()  # present: their contents are the actors' business
                return _inspect_folder(Path(tmp), uri)
        if not fs.exists(root):
            raise CheckpointError(f"{uri}: no such object")
        with fs.open(root, "rb") as f:
            return _inspect_nemo(f, uri)
    except (CheckpointError, ConfigError):
        raise
    except Exception as e:  # fsspec backends raise many types; name the URI
        raise CheckpointError(f"{uri}: cannot read the checkpoint ({type(e).__name__}: {e})") from e


def _inspect_hub(repo_id: str) -> ModelConfig | None:
    """A hub id: its small files (configs, tokenizer) are fetched into the hub cache and the config read;
    a single-.nemo repo is read from the cache when it is there, else only its existence is checked."""
    from huggingface_hub import snapshot_download

    try:
        folder = Path(snapshot_download(repo_id, allow_patterns=["*.json", "*.yaml", "*.model"]))
    except Exception as e:
        raise CheckpointError(f"{repo_id}: not a local path, and the hub has no such model or cannot be reached "
                              f"({type(e).__name__}: {e})") from e
    if (folder / OUR_CONFIG).exists() or (folder / "config.json").exists():
        return inspect(folder)
    try:
        cached = sorted(Path(snapshot_download(repo_id, allow_patterns=["*.nemo"], local_files_only=True)).glob("*.nemo"))
    except Exception:  # not cached: huggingface_hub raises its own LocalEntryNotFoundError
        cached = []
    return inspect(cached[0]) if len(cached) == 1 else None


# ---- saving --------------------------------------------------------------------------------
def save(model: ParakeetTDT, folder: str | os.PathLike) -> Path:
    """Write `folder` (created if needed; a local path or fsspec URI): transformers layout + our config."""
    folder = os.fspath(folder)
    if "://" in folder and not folder.startswith("file://"):
        import fsspec

        with tempfile.TemporaryDirectory(prefix="parakeet-save-") as tmp:
            save(model, tmp)
            fs, root = fsspec.core.url_to_fs(folder)
            fs.makedirs(root, exist_ok=True)
            fs.put(tmp.rstrip("/") + "/", root.rstrip("/") + "/", recursive=True)
        return Path(folder)
    out = Path(folder.removeprefix("file://"))
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    save_file(ours_to_hf(state), str(out / HF_WEIGHTS), metadata={"format": "pt"})
    (out / OUR_CONFIG).write_text(json.dumps(model.config.to_dict(), indent=2))
    try:
        hf = config_to_hf(model.config)
    except ConfigError:
        hf = None  # an architecture transformers cannot express: our config alone describes it
    if hf is not None:
        (out / "config.json").write_text(json.dumps(hf, indent=2))
        (out / "preprocessor_config.json").write_text(json.dumps(preprocessor_to_hf(model.config), indent=2))
    if model.tokenizer is not None:
        model.tokenizer.save(out)
    return out
