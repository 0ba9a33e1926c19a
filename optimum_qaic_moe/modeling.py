"""``QAICModelForCausalLM``: exported QAIC graphs behind transformers' ``generate`` and ``pipeline``, in the style
of Optimum's ``ORTModelForCausalLM``.

    model = QAICModelForCausalLM.from_pretrained("Qwen/Qwen3-30B-A3B", export=True, prefill_seq_len=512)
    tokenizer = AutoTokenizer.from_pretrained("Qwen/Qwen3-30B-A3B")
    print(tokenizer.decode(model.generate(**tokenizer("the cat", return_tensors="pt"), max_new_tokens=8)[0]))

The KV cache lives in the runtime session as retained state, not in transformers cache objects. Inside
``generate`` the first ``forward`` runs the prompt (as prefill chunks) and each later one feeds one new token
(decode). Any other call of the model is a fresh prompt: it starts from an empty cache and returns the logits of
each row's last token, ``[batch, 1, vocab]`` (the graphs compute no other position, so asking for more, with
``labels`` or ``logits_to_keep``, is an error).

The graphs have a fixed batch size: a smaller batch is padded up with copies of its first row, a larger one runs
as several groups, each with its own KV cache, so ``num_return_sequences`` and any batch work.
"""

from __future__ import annotations

import copy
import os
import shutil
import tempfile

import numpy as np
import torch
from transformers import AutoConfig, GenerationConfig, GenerationMixin, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from .api import main_export, python_errors
from .export_dir import read_export_config
from .runtime.runner import CausalLMRunner
from .settings import ExportSettings, UserError
from .sources import resolve_export_dir

LOADING_OPTIONS = ("revision", "subfolder", "cache_dir", "token", "local_files_only", "trust_remote_code")
# save_pretrained keywords of transformers that have no meaning for an export (the graphs are saved as they are).
IGNORED_SAVE_OPTIONS = (
    "safe_serialization",
    "max_shard_size",
    "variant",
    "state_dict",
    "save_function",
    "is_main_process",
    "save_peft_format",
    "save_original_format",
    "token",
)
PUSH_OPTIONS = ("repo_id", "commit_message", "private", "revision", "create_pr")


class QAICModelForCausalLM(PreTrainedModel, GenerationMixin):
    """A parameter-free ``PreTrainedModel``: the weights live in the exported graphs. Subclassing it gives
    transformers' ``generate`` everything it expects from a model (on both transformers lines)."""

    config_class = PretrainedConfig
    main_input_name = "input_ids"
    _is_stateful = True  # the cache is device/session state: no assisted decoding

    def __init__(
        self,
        export_dir: str,
        device: str = "cpu",
        _tempdir=None,
        trust_remote_code: bool = False,
        device_ids=None,
        data_path_timeout_ms=None,
    ):
        from .exporters.publish import check_complete

        export_dir = os.path.abspath(export_dir)
        check_complete(export_dir)  # never a staging directory of an unfinished export
        meta = read_export_config(export_dir)  # validated before the runtime reads it
        super().__init__(AutoConfig.from_pretrained(export_dir, trust_remote_code=trust_remote_code))
        self.export_dir = export_dir
        try:
            self.generation_config = GenerationConfig.from_pretrained(export_dir)
        except OSError:
            self.generation_config = GenerationConfig.from_model_config(self.config)
        self.settings = ExportSettings.from_dict(meta["settings"])
        self.runner = CausalLMRunner(
            export_dir, device=device, device_ids=device_ids, data_path_timeout_ms=data_path_timeout_ms
        )
        self._tempdir = _tempdir  # keeps a temporary export alive as long as the model
        self._in_generate = False
        self._groups: list[dict] = []  # KV cache of each batch group of the current generation

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")  # where inputs and outputs live; the graphs run in the runner

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32  # of the logits (the model has no torch parameters to ask)

    # -- loading and saving ---------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(  # type: ignore[override]  # Optimum's signature (model_id, export=...), not transformers'
        cls,
        model_id: str,
        export: bool = False,
        device: str = "cpu",
        device_ids=None,
        data_path_timeout_ms=None,
        **options,
    ):
        """Load an export (a directory or a Hub id), or with ``export=True`` export a transformers checkpoint
        (a directory or a Hub id) first.

        ``device="qaic"`` runs the compiled programs on Cloud AI 100 cards: ``device_ids`` places them (a list
        for both, or {"prefill": [...], "decode": [...]}; default: the runtime picks), ``data_path_timeout_ms``
        bounds the wait for the card per call (default 60000).

        ``options``: the standard loading keywords (``revision``, ``subfolder``, ``cache_dir``, ``token``,
        ``local_files_only``, ``trust_remote_code``) and, with ``export=True``, the export options of
        ``optimum_qaic_moe.main_export`` (``prefill_seq_len``, ``ctx_len``, ``num_cores``, ...). An export goes to a
        temporary directory unless ``output`` is given; ``save_pretrained`` copies it. Unknown keywords raise
        ``TypeError``."""
        placement = {"device_ids": device_ids, "data_path_timeout_ms": data_path_timeout_ms}
        if export:
            return cls._export(model_id, device, options, placement)
        unknown = sorted(set(options) - set(LOADING_OPTIONS))
        if unknown:
            raise TypeError(
                f"from_pretrained() got unexpected keyword argument(s) for loading an export: "
                f"{', '.join(unknown)} (export options need export=True)"
            )
        trust_remote_code = options.pop("trust_remote_code", False)
        with python_errors():
            export_dir = resolve_export_dir(model_id, **options)
            return cls(export_dir, device=device, trust_remote_code=trust_remote_code, **placement)

    @classmethod
    def _export(cls, model_id: str, device: str, options: dict, placement: dict):
        tempdir = None
        if not options.get("output"):
            tempdir = tempfile.TemporaryDirectory(prefix="qaic-export-")
            options["output"] = os.path.join(tempdir.name, "export")
        options.setdefault("compile", "never" if device == "cpu" else "always")
        output = main_export(model_id, **options)
        with python_errors():
            return cls(
                output,
                device=device,
                _tempdir=tempdir,
                trust_remote_code=bool(options.get("trust_remote_code")),
                **placement,
            )

    def save_pretrained(  # type: ignore[override]  # push_to_hub 2nd (transformers: is_main_process); rest **kwargs
        self, save_directory: str, push_to_hub: bool = False, **kwargs
    ) -> None:
        """Copy the export (graphs, compiler inputs, compiled programs, config, tokenizer) to ``save_directory``.

        transformers' keywords that concern torch weights (``safe_serialization``, ``max_shard_size``, ...) are
        accepted and ignored; ``push_to_hub=True`` then uploads it (``repo_id``, ``commit_message``, ...)."""
        unknown = sorted(set(kwargs) - set(IGNORED_SAVE_OPTIONS) - set(PUSH_OPTIONS))
        if unknown:
            raise TypeError(f"save_pretrained() got unexpected keyword argument(s): {', '.join(unknown)}")
        if os.path.abspath(save_directory) != self.export_dir:
            shutil.copytree(self.export_dir, save_directory, dirs_exist_ok=True)
        if push_to_hub:
            repo_id = kwargs.pop("repo_id", None) or os.path.basename(os.path.abspath(save_directory))
            self.push_to_hub(
                repo_id, token=kwargs.get("token"), **{k: v for k, v in kwargs.items() if k in PUSH_OPTIONS}
            )

    def push_to_hub(  # type: ignore[override]  # transformers' is a functools.wraps object no method can match
        self,
        repo_id: str,
        commit_message: str | None = None,
        private: bool | None = None,
        token: bool | str | None = None,
        revision: str | None = None,
        create_pr: bool = False,
        **kwargs,
    ):
        """Upload the export to the Hugging Face Hub repository ``repo_id`` (created if needed) through
        ``huggingface_hub``; returns its ``CommitInfo``. ``from_pretrained(repo_id)`` loads it back. transformers'
        weight keywords (``safe_serialization``, ``max_shard_size``, ...) are accepted and ignored."""
        from huggingface_hub import HfApi

        unknown = sorted(set(kwargs) - set(IGNORED_SAVE_OPTIONS) - {"use_temp_dir"})
        if unknown:
            raise TypeError(f"push_to_hub() got unexpected keyword argument(s): {', '.join(unknown)}")
        api = HfApi(token=token)
        repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
        return api.upload_folder(
            repo_id=repo_id,
            folder_path=self.export_dir,
            revision=revision,
            commit_message=commit_message or "Upload QAIC export (optimum-qaic-moe)",
            create_pr=create_pr,
        )

    # -- what GenerationMixin and pipelines need ------------------------------------------------------------

    @classmethod
    def can_generate(cls) -> bool:
        return True

    def get_input_embeddings(self):
        return None

    def _prepare_cache_for_generation(self, *args, **kwargs):
        """No transformers cache: the KV cache is retained state inside the runtime session."""

    def prepare_inputs_for_generation(self, input_ids, attention_mask=None, **kwargs):
        return {"input_ids": input_ids, "attention_mask": attention_mask}

    def generate(self, inputs: torch.Tensor | None = None, generation_config: GenerationConfig | None = None, **kwargs):
        """transformers' ``generate`` (greedy, sampling, ``num_return_sequences``, streamers, stopping criteria),
        after checking what the fixed graphs cannot do, before any work."""
        config = copy.deepcopy(generation_config if generation_config is not None else self.generation_config)
        config.update(**{k: v for k, v in kwargs.items() if hasattr(config, k)})
        input_ids = inputs if inputs is not None else kwargs.get("input_ids")
        self._check_generation(config, input_ids, kwargs.get("attention_mask"))
        self._in_generate, self._groups = True, []  # the first forward of this generation runs the prompt
        try:
            with python_errors():  # a runtime error names ctx_len, not --ctx-len
                return super().generate(inputs, generation_config, **kwargs)
        finally:
            self._in_generate, self._groups = False, []

    def _check_generation(self, config: GenerationConfig, input_ids, attention_mask) -> None:
        if (config.num_beams or 1) > 1:
            raise UserError(
                f"beam search (num_beams={config.num_beams}) is not supported: the exported graphs keep "
                "one KV cache per row and cannot reorder it between beams, and no export option changes "
                "that; use greedy search or sampling (do_sample=True, num_return_sequences=N)"
            )
        if input_ids is None:
            return
        self._check_ids(input_ids)
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        longest = int(mask.sum(dim=1).max())
        new = config.max_new_tokens if config.max_new_tokens is not None else config.max_length - input_ids.shape[1]
        # The last new token is never fed back: longest + new - 1 positions reach the cache.
        if new > 0 and longest + new - 1 > self.runner.ctx_len:
            raise UserError(
                f"a prompt of {longest} tokens plus {new} new tokens needs {longest + new - 1} cache "
                f"positions, but this export has ctx_len={self.runner.ctx_len}: export again with "
                f"ctx_len={longest + new - 1} or more (--ctx-len), or set "
                f"max_new_tokens={self.runner.ctx_len - longest + 1}"
            )

    def _check_ids(self, input_ids: torch.Tensor) -> None:
        if input_ids.dim() != 2 or input_ids.shape[0] == 0 or input_ids.shape[1] == 0:
            raise UserError(
                f"empty prompt: input_ids has shape {tuple(input_ids.shape)}; give at least one token "
                "per row, as [batch, tokens]"
            )
        vocab = self.config.vocab_size
        low, high = int(input_ids.min()), int(input_ids.max())
        if low < 0 or high >= vocab:
            bad = low if low < 0 else high
            raise UserError(
                f"token id {bad} is outside the vocabulary [0, {vocab}): check the tokenizer matches "
                "the model (padding must use a real token id, such as pad_token_id)"
            )

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        logits_to_keep: int | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ):
        """Logits of each row's last token, ``[batch, 1, vocab]``. In ``generate``, the first call runs the
        (left-padded) prompt and later calls feed the last token of the sequence so far; any other call is a fresh
        prompt."""
        if labels is not None or logits_to_keep not in (None, 1):
            raise UserError(
                "QAICModelForCausalLM computes the logits of each row's last token only (the graphs "
                "output no other position): scoring a whole sequence (labels=..., logits_to_keep=0) needs "
                "the transformers model"
            )
        self._check_ids(input_ids)
        ids = input_ids.cpu().numpy()
        mask = np.ones_like(ids) if attention_mask is None else attention_mask.cpu().numpy()
        if (mask.sum(axis=1) == 0).any():
            raise UserError("empty prompt: a row of attention_mask has no token; give at least one token per row")
        if self._in_generate and self._groups:
            last = self._decode_groups(ids[:, -1], mask.sum(axis=1) - 1)  # [B, V]
        else:
            last = self._prefill_groups(ids, mask)
        logits = torch.from_numpy(last).unsqueeze(1)  # [B, 1, V]
        return CausalLMOutputWithPast(logits=logits) if return_dict is not False else (logits,)

    # -- any batch on graphs of one batch size --------------------------------------------------------------

    def _prefill_groups(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Prompts [N, n] -> logits [N, V]; one KV cache per group of ``batch_size`` rows."""
        longest = int(mask.sum(axis=1).max())
        if longest > self.runner.ctx_len:
            raise UserError(
                f"a prompt of {longest} tokens does not fit this export's ctx_len={self.runner.ctx_len}: "
                f"export again with ctx_len={longest} or more (--ctx-len)"
            )
        groups, logits = [], []
        for rows in self._row_groups(len(ids)):
            logits.append(self.runner.prefill(*self._fill(rows, ids, mask))[: len(rows)])
            groups.append(self.runner.cache)
        self._groups = groups
        return np.concatenate(logits)

    def _decode_groups(self, tokens: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """One token per row [N] at positions [N] -> logits [N, V], each group on its own cache."""
        logits = []
        for g, rows in enumerate(self._row_groups(len(tokens))):
            if len(self._groups) > 1:
                self.runner.cache = self._groups[g]
            logits.append(self.runner.decode(*self._fill(rows, tokens, positions))[: len(rows)])
            self._groups[g] = self.runner.cache
        return np.concatenate(logits)

    def _row_groups(self, n: int) -> list[range]:
        size = self.runner.batch_size
        return [range(start, min(start + size, n)) for start in range(0, n, size)]

    def _fill(self, rows: range, *arrays: np.ndarray):
        """The rows of a group, padded up to the graphs' batch with copies of its first row (a valid prompt whose
        results are dropped)."""
        pad = [rows.start] * (self.runner.batch_size - len(rows))
        return tuple(a[list(rows) + pad] for a in arrays)

    def __repr__(self) -> str:
        s = self.settings
        return (
            f"QAICModelForCausalLM({self.config.model_type}, graphs={self.runner.meta['graphs']}, "
            f"batch_size={s.batch_size}, prefill_seq_len={s.prefill_seq_len}, ctx_len={s.ctx_len}, "
            f"num_cores={s.num_cores}, export_dir={self.export_dir!r})"
        )


def _register_for_pipelines() -> None:
    """``pipeline("text-generation", model=qaic_model)`` checks the model's class name against transformers'
    causal-LM table and logs an error listing ~200 names when it is missing. An entry under a key that is no
    config's model_type makes the name known without changing what ``AutoModelForCausalLM`` loads."""
    from transformers.models.auto import modeling_auto

    modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.setdefault("optimum_qaic_moe", QAICModelForCausalLM.__name__)


_register_for_pipelines()
