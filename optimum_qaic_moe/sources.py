"""Where a checkpoint or an export comes from, and a first look at it before anything heavy is loaded.

- ``resolve_model_dir``: a local directory, or a Hugging Face Hub id resolved through ``huggingface_hub`` (its
  cache, or a download) honouring revision, token, cache_dir, subfolder, local_files_only and ``HF_HUB_OFFLINE``.
  Returns a local directory: everything downstream reads files.
- ``read_model_config``: ``config.json`` parsed and sanity-checked (JSON object, model_type, positive sizes, top-k
  within the expert count), so a damaged checkpoint is one clear line instead of a traceback mid-export.
- ``save_tokenizer``: the checkpoint's tokenizer saved by its own ``save_pretrained``, reading only files that
  resolve inside the model directory (or the Hub cache blobs it links to).
"""

from __future__ import annotations

import json
import os
import tempfile

from .settings import UserError

# Files of a checkpoint the export reads: config, weights (safetensors) and tokenizer. Not *.bin / *.pth / *.gguf
# duplicates, nor folders such as gpt-oss's original/ and metal/.
CHECKPOINT_PATTERNS = ("*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf", ".onnx", ".data")

# config.json fields that are sizes: when present (and not null), each must be a positive integer.
SIZE_FIELDS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "moe_intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "num_experts",
    "num_local_experts",
    "n_routed_experts",
    "num_experts_per_tok",
    "max_position_embeddings",
    "sliding_window",
)
EXPERT_COUNT_FIELDS = ("num_experts", "num_local_experts", "n_routed_experts")
# size fields where 0 means "none": transformers 5.x writes sliding_window 0 when a model has no window (Qwen2-MoE)
ZERO_MEANS_NONE = ("sliding_window",)


# -- resolution ---------------------------------------------------------------------------------------------------


def resolve_model_dir(
    model: str,
    *,
    revision: str | None = None,
    subfolder: str = "",
    cache_dir: str | None = None,
    token: str | None = None,
    local_files_only: bool = False,
    trust_remote_code: bool = False,
) -> str:
    """A checkpoint directory holding config.json, from a local path or a Hub model id."""
    patterns = list(CHECKPOINT_PATTERNS) + (["*.py"] if trust_remote_code else [])
    path = _resolve(
        model,
        "model",
        revision=revision,
        subfolder=subfolder,
        cache_dir=cache_dir,
        token=token,
        local_files_only=local_files_only,
        patterns=patterns,
    )
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise UserError(
            f"no config.json in {path}: the model must be a transformers checkpoint directory "
            "(config.json and the weights) or a Hub id of one"
        )
    return path


def resolve_export_dir(
    model: str,
    *,
    revision: str | None = None,
    subfolder: str = "",
    cache_dir: str | None = None,
    token: str | None = None,
    local_files_only: bool = False,
) -> str:
    """A QAIC export directory (qaic_config.json, graphs), from a local path or a Hub id (every file of it)."""
    return _resolve(
        model,
        "export",
        revision=revision,
        subfolder=subfolder,
        cache_dir=cache_dir,
        token=token,
        local_files_only=local_files_only,
        patterns=None,
    )


def _resolve(model: str, what: str, *, revision, subfolder, cache_dir, token, local_files_only, patterns) -> str:
    path = os.path.expanduser(model)
    if os.path.lexists(path):
        if not os.path.exists(path):
            raise UserError(
                f"{what} {model} is a broken symbolic link (to {os.readlink(path)}): point it at an existing directory"
            )
        if not os.path.isdir(path):
            raise UserError(f"{what} {model} is a file: give the directory that holds it")
        return _subfolder(path, subfolder, model)
    if not _is_repo_id(model):
        raise UserError(
            f"{what} directory not found: {model} (give a local directory or a Hugging Face Hub "
            "id such as Qwen/Qwen3-30B-A3B)"
        )
    allow = None if patterns is None else [f"{subfolder.strip('/')}/{p}" if subfolder else p for p in patterns]
    snapshot = _snapshot_download(
        model,
        revision=revision,
        cache_dir=cache_dir,
        token=token,
        local_files_only=local_files_only,
        allow_patterns=allow,
    )
    return _subfolder(snapshot, subfolder, model)


def _subfolder(path: str, subfolder: str, model: str) -> str:
    if not subfolder:
        return path
    inner = os.path.join(path, subfolder)
    if not os.path.isdir(inner):
        raise UserError(f"no subfolder {subfolder!r} in {model} ({path}): check --subfolder")
    return inner


def _is_repo_id(name: str) -> bool:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def _snapshot_download(repo_id: str, *, revision, cache_dir, token, local_files_only, allow_patterns) -> str:
    import huggingface_hub
    from huggingface_hub import constants, errors

    where = f"{repo_id}" + (f" (revision {revision})" if revision else "")
    try:
        return huggingface_hub.snapshot_download(
            repo_id,
            revision=revision,
            cache_dir=cache_dir,
            token=token,
            local_files_only=local_files_only,
            allow_patterns=allow_patterns,
        )
    except errors.GatedRepoError:
        raise UserError(
            f"{where} is a gated model: accept its conditions on huggingface.co and pass a token "
            "(--token or `hf auth login`)"
        ) from None
    except errors.RepositoryNotFoundError:
        raise UserError(
            f"no model {repo_id} on the Hugging Face Hub (or it is private: pass --token), and no such local directory"
        ) from None
    except errors.RevisionNotFoundError:
        raise UserError(
            f"{repo_id} has no revision {revision!r}: give an existing branch, tag or commit to --revision"
        ) from None
    except errors.LocalEntryNotFoundError:
        cache = cache_dir or constants.HF_HUB_CACHE
        why = (
            "local_files_only is set"
            if local_files_only
            else "HF_HUB_OFFLINE is set"
            if constants.HF_HUB_OFFLINE
            else "the Hub could not be reached"
        )
        raise UserError(
            f"{where} is not a local directory and not in the Hugging Face cache ({cache}), and {why}: "
            f"download it first (hf download {repo_id}) or give a local directory"
        ) from None
    except (errors.HfHubHTTPError, OSError, ValueError) as e:  # incomplete snapshot, HTTP error, bad token, ...
        raise UserError(f"could not get {where} from the Hugging Face Hub: {_first_line(e)}") from None


# -- config.json ------------------------------------------------------------------------------------------------


def read_model_config(model_dir: str) -> dict:
    """config.json as a dict, checked enough that loading it cannot fail in a confusing way."""
    path = os.path.join(model_dir, "config.json")
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except json.JSONDecodeError as e:
        raise UserError(
            f"{path} is not valid JSON ({e.msg} at line {e.lineno} column {e.colno}): "
            "repair it or download the checkpoint again"
        ) from None
    except UnicodeDecodeError:
        raise UserError(f"{path} is not a UTF-8 text file: download the checkpoint again") from None
    if not isinstance(config, dict):
        raise UserError(f"{path} holds a JSON {type(config).__name__}, not an object: it is not a transformers config")
    check_model_config(config, path)
    return config


def check_model_config(config: dict, path: str) -> None:
    model_type = config.get("model_type")
    if not model_type:
        raise UserError(f"{path} has no model_type: is this a transformers checkpoint?")
    if not isinstance(model_type, str):
        raise UserError(f'{path}: model_type must be a string such as "qwen3_moe", got {model_type!r}')
    for name in SIZE_FIELDS:
        value = config.get(name)
        if value == 0 and name in ZERO_MEANS_NONE:
            continue
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise UserError(f"{path}: {name} must be a positive integer, got {value!r}")
    experts = next((config[n] for n in EXPERT_COUNT_FIELDS if config.get(n) is not None), None)
    top_k = config.get("num_experts_per_tok")
    if experts is not None and top_k is not None and top_k > experts:
        raise UserError(
            f"{path}: num_experts_per_tok is {top_k} but the model has {experts} experts: a token "
            "cannot pick more experts than there are"
        )
    heads, kv_heads = config.get("num_attention_heads"), config.get("num_key_value_heads")
    if heads is not None and kv_heads is not None and heads % kv_heads:
        raise UserError(f"{path}: num_attention_heads {heads} is not a multiple of num_key_value_heads {kv_heads}")


# -- tokenizer --------------------------------------------------------------------------------------------------


def save_tokenizer(model_dir: str, target: str, trust_remote_code: bool = False) -> tuple[str, ...]:
    """Save the checkpoint's tokenizer into ``target`` with its own ``save_pretrained``; returns the files written.

    Only files that resolve inside ``model_dir`` (or the Hub cache blobs a snapshot links to) are read: a symbolic
    link to anything else (say /etc/passwd behind ``chat_template.jinja``) is skipped with a warning."""
    from .logging import warning

    safe, skipped = side_files(model_dir)
    for name, real in skipped:
        warning(f"not copying {name} from {model_dir}: it links to {real}, outside the model directory")
    with tempfile.TemporaryDirectory(prefix="qaic-tokenizer-") as view:
        for name, real in safe:
            os.symlink(real, os.path.join(view, name))
        try:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(view, trust_remote_code=trust_remote_code)
        except Exception as e:  # noqa: BLE001 -- no tokenizer, or one transformers cannot read: export anyway
            warning(f"no tokenizer saved with the export ({_first_line(e)})")
            return ()
        return tuple(tokenizer.save_pretrained(target))


def side_files(model_dir: str) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """Top-level non-weight files of ``model_dir`` as (name, resolved path): (safe, skipped)."""
    roots = trusted_roots(model_dir)
    safe: list[tuple[str, str]] = []
    skipped: list[tuple[str, str]] = []
    for name in sorted(os.listdir(model_dir)):
        path = os.path.join(model_dir, name)
        if not os.path.isfile(path) or name.endswith(WEIGHT_SUFFIXES):
            continue
        real = os.path.realpath(path)
        (safe if any(_inside(real, root) for root in roots) else skipped).append((name, real))
    return safe, skipped


def trusted_roots(model_dir: str) -> list[str]:
    """``model_dir`` itself, and for a Hub cache snapshot (``models--org--name/snapshots/<commit>[/sub]``) the
    repository's ``blobs`` folder its files link to."""
    real = os.path.realpath(model_dir)
    roots = [real]
    parts = real.split(os.sep)
    for i in range(len(parts) - 1, 0, -1):
        if parts[i] == "snapshots" and parts[i - 1].startswith(("models--", "datasets--", "spaces--")):
            roots.append(os.sep.join(parts[:i] + ["blobs"]))
            break
    return roots


def _inside(path: str, root: str) -> bool:
    return os.path.commonpath([path, root]) == root


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
