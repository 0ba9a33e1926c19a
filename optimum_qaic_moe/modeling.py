"""``QAICModelForCausalLM``: exported QAIC graphs behind transformers' ``generate``, in the style of Optimum's
``ORTModelForCausalLM``.

    model = QAICModelForCausalLM.from_pretrained("./tiny-qwen3-moe", export=True, prefill_seq_len=16, ctx_len=128)
    tokenizer = AutoTokenizer.from_pretrained("./tiny-qwen3-moe")
    print(tokenizer.decode(model.generate(**tokenizer("the cat", return_tensors="pt"), max_new_tokens=8)[0]))

The KV cache lives in the runtime session as retained state: ``forward`` runs the prompt as prefill chunks on
the first step of a generation and one decode step afterwards, so transformers' cache objects are not used.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from typing import Optional

import numpy as np
import torch
from transformers import AutoConfig, GenerationConfig, GenerationMixin, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from .runtime.session import CausalLMRunner
from .settings import ExportSettings, UserError


class QAICModelForCausalLM(PreTrainedModel, GenerationMixin):
    """A parameter-free ``PreTrainedModel``: the weights live in the exported graphs. Subclassing it gives
    transformers' ``generate`` everything it expects from a model (on both transformers lines)."""

    config_class = PretrainedConfig
    main_input_name = "input_ids"
    _is_stateful = True  # the cache is device/session state: no beam search, no assisted decoding

    def __init__(self, export_dir: str, device: str = "cpu", _tempdir=None, device_ids=None,
                 data_path_timeout_ms=None):
        export_dir = os.path.abspath(export_dir)
        super().__init__(AutoConfig.from_pretrained(export_dir))
        self.export_dir = export_dir
        try:
            self.generation_config = GenerationConfig.from_pretrained(export_dir)
        except OSError:
            self.generation_config = GenerationConfig.from_model_config(self.config)
        self.runner = CausalLMRunner(export_dir, device=device, device_ids=device_ids,
                                     data_path_timeout_ms=data_path_timeout_ms)
        self.settings = ExportSettings.from_dict(self.runner.meta["settings"])
        self._tempdir = _tempdir  # keeps a temporary export alive as long as the model
        self._started = False

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")  # where inputs and outputs live; the graphs run in the runner

    # -- loading and saving ---------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, model_id: str, export: bool = False, device: str = "cpu", device_ids=None,
                        data_path_timeout_ms=None, **options):
        """Load an export directory, or with ``export=True`` export a transformers checkpoint first.

        ``device="qaic"`` runs the compiled programs on Cloud AI 100 cards: ``device_ids`` places them (a list
        for both, or {"prefill": [...], "decode": [...]}; default: the runtime picks), ``data_path_timeout_ms``
        bounds the wait for the card per call (default 60000).

        ``options`` are the CLI options in snake_case (``prefill_seq_len``, ``ctx_len``, ``num_cores``,
        ``moe_prefill_packed_chunk_size``, ``batch_size``, ``compile``, ...). Exports go to a temporary
        directory unless ``output`` is given; ``save_pretrained`` copies them."""
        if not os.path.isdir(model_id):
            raise UserError(f"model directory not found: {model_id} (pass a local directory)")
        if not export:
            from .exporters.publish import check_complete

            check_complete(model_id)
            if not os.path.isfile(os.path.join(model_id, "qaic_config.json")):
                raise UserError(f"{model_id} is not a QAIC export (no qaic_config.json): "
                                "pass export=True to export a transformers checkpoint")
            return cls(model_id, device=device, device_ids=device_ids, data_path_timeout_ms=data_path_timeout_ms)
        from .exporters.main import main_export

        names = {f.name for f in dataclasses.fields(ExportSettings)}
        unknown = sorted(set(options) - names)
        if unknown:
            raise TypeError(f"unknown export option(s): {', '.join(unknown)}")
        tempdir = None
        if not options.get("output"):
            tempdir = tempfile.TemporaryDirectory(prefix="qaic-export-")
            options["output"] = os.path.join(tempdir.name, "export")
        options.setdefault("compile", "never" if device == "cpu" else "always")
        settings = ExportSettings(model=model_id, **options)
        output = main_export(settings)
        return cls(output, device=device, _tempdir=tempdir, device_ids=device_ids,
                   data_path_timeout_ms=data_path_timeout_ms)

    def save_pretrained(self, save_directory: str) -> None:
        if os.path.abspath(save_directory) == self.export_dir:
            return
        shutil.copytree(self.export_dir, save_directory, dirs_exist_ok=True)

    # -- what GenerationMixin needs --------------------------------------------------------------------------

    @classmethod
    def can_generate(cls) -> bool:
        return True

    def get_input_embeddings(self):
        return None

    def _prepare_cache_for_generation(self, *args, **kwargs):
        """No transformers cache: the KV cache is retained state inside the runtime session."""

    def prepare_inputs_for_generation(self, input_ids, attention_mask=None, **kwargs):
        return {"input_ids": input_ids, "attention_mask": attention_mask}

    def generate(self, *args, **kwargs):
        self._started = False  # a new generation starts with a prefill
        return super().generate(*args, **kwargs)

    def forward(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None, **kwargs):
        """First call of a generation: the whole (left-padded) prompt. Later calls: the sequence so far, of
        which only the last token is new. Returns logits [B, 1, V] for the last position."""
        ids = input_ids.cpu().numpy()
        mask = np.ones_like(ids) if attention_mask is None else attention_mask.cpu().numpy()
        if not self._started:
            logits = self.runner.prefill(ids, mask)
            self._started = True
        else:
            logits = self.runner.decode(ids[:, -1], mask.sum(axis=1) - 1)
        return CausalLMOutputWithPast(logits=torch.from_numpy(logits).unsqueeze(1))

    def __repr__(self) -> str:
        s = self.settings
        return (f"QAICModelForCausalLM({self.config.model_type}, graphs={self.runner.meta['graphs']}, "
                f"batch_size={s.batch_size}, prefill_seq_len={s.prefill_seq_len}, ctx_len={s.ctx_len}, "
                f"num_cores={s.num_cores}, export_dir={self.export_dir!r})")
