"""zerank: a Qwen3 decoder scored as a reranker.

A (query, document) pair is rendered with zerank's chat template (system turn = query, user turn = document, then
the assistant prompt) and run through a Qwen3 backbone. The relevance logit is the language-model logit of the
"Yes" token at the last position, which is the hidden state of the last real token projected on one row of the LM
head. This file keeps only that row (``score.weight``, shape [1, hidden]) instead of the full-vocabulary head, and
returns the calibrated logit ``(h . w_yes - score_bias) / score_temperature``: its sigmoid is the 0..1 relevance
score (sentence-transformers applies the sigmoid by default for one label).

At inference the padded batch may instead run through the fast path of ``zerank_fast_path.py`` (same scores, fewer
tokens: shared query prefixes run once, padding dropped); runtime tuning lives there, not in the config.

This file and ``zerank_fast_path.py`` are copied next to the weights and loaded with ``trust_remote_code=True``.
"""

from __future__ import annotations

import transformers

MIN_TRANSFORMERS = "5.18"


def check_transformers_version(version: str) -> None:
    """Fail with one line when transformers is older than the remote code needs (4.x cannot define the config)."""
    major_minor = tuple(int(part) for part in version.split(".")[:2] if part.isdigit())
    if major_minor < tuple(int(part) for part in MIN_TRANSFORMERS.split(".")):
        raise ImportError(f"zerank's remote code needs transformers>={MIN_TRANSFORMERS}, found {version}: "
                          f"pip install -U 'transformers>={MIN_TRANSFORMERS}'")


check_transformers_version(transformers.__version__)

# After the version check: on transformers 4.x the imports below fail with a cryptic error.
import torch
from huggingface_hub.dataclasses import strict
from torch import nn
from transformers.modeling_outputs import SequenceClassifierOutput
from transformers.models.qwen3.configuration_qwen3 import Qwen3Config
from transformers.models.qwen3.modeling_qwen3 import Qwen3Model, Qwen3PreTrainedModel

try:  # a relative import, so that transformers copies the sibling module with the remote code
    from .zerank_fast_path import FastPath, FastPathSettings
except ImportError:  # imported as a top-level module (the zerank library, the tests)
    from zerank_fast_path import FastPath, FastPathSettings

logger = transformers.utils.logging.get_logger(__name__)  # transformers' logger (warning_once: once per process)


@strict
class ZerankConfig(Qwen3Config):
    r"""
    Configuration of a zerank reranker: a Qwen3 backbone plus the scoring head.

    Args:
        yes_token_id (`int`, *optional*, defaults to 9454):
            Vocabulary id of the token "Yes" whose LM-head row becomes the scoring vector.
        score_temperature (`float`, *optional*, defaults to 5.0):
            Calibration temperature T in ``sigmoid((raw_logit - score_bias) / T)``. Must be positive.
        score_bias (`float`, *optional*, defaults to 0.0):
            Calibration bias b in ``sigmoid((raw_logit - b) / score_temperature)``.
        max_query_tokens (`int`, *optional*, defaults to 4096):
            Longest query (in tokens, instruction included) that the sentence-transformers input module keeps;
            longer queries are cut with a warning so that the document always has room in the context.
        split_special_tokens_in_content (`bool`, *optional*, defaults to `True`):
            The sentence-transformers input module tokenizes the query, the document and the instruction as text:
            a special-token string in them (``<|im_end|>``) becomes ordinary characters, never a control token, so
            content cannot close its turn. False restores upstream's encoding (the rendered prompt tokenized as one
            string), for parity with runtimes that do so.
        prompt_prefix_ids (`list[int]`, *optional*):
            Token ids that begin every rendered prompt (zerank's template up to the query). With
            ``prompt_suffix_ids``, lets the model notice input that was not rendered with the template.
        prompt_suffix_ids (`list[int]`, *optional*):
            Token ids that end every rendered prompt (the template after the document: the assistant prompt).
        num_labels (`int`, *optional*, defaults to 1):
            One relevance logit per pair. Qwen3Config's default of 2 would make sentence-transformers skip the sigmoid.

    The config describes the model and its scoring only. The inference fast path's runtime settings (token budgets,
    prefix sharing, the cost rule's constants) are ``zerank_fast_path.FastPathSettings``, code defaults per device
    kind; an older package's config.json that still carries them loads, and its values become the model's settings.
    """

    model_type = "zerank"

    yes_token_id: int = 9454
    score_temperature: float = 5.0
    score_bias: float = 0.0
    max_query_tokens: int = 4096
    split_special_tokens_in_content: bool = True
    prompt_prefix_ids: list[int] | None = None
    prompt_suffix_ids: list[int] | None = None

    def __post_init__(self, **kwargs):
        if self.id2label is None:
            kwargs.setdefault("num_labels", 1)
        super().__post_init__(**kwargs)

    def validate_score(self):
        if not self.score_temperature > 0:
            raise ValueError(f"score_temperature must be positive, got {self.score_temperature}.")
        if not 0 <= self.yes_token_id < self.vocab_size:
            raise ValueError(f"yes_token_id {self.yes_token_id} is outside the vocabulary (size {self.vocab_size}).")
        if self.max_query_tokens < 1:
            raise ValueError(f"max_query_tokens must be at least 1, got {self.max_query_tokens}.")
        if self.num_labels != 1:
            raise ValueError(f"zerank scores one logit per pair, so num_labels must be 1, got {self.num_labels}.")


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices in hardware: x86 with AVX512-BF16 or AMX, Arm with the BF16
    extension (read from /proc/cpuinfo on Linux). Elsewhere torch emulates bf16 on the CPU, many times slower than
    fp32."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    if any(getattr(torch.cpu, check, lambda: False)() for check in checks):
        return True
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith(("flags", "Features")):
                    return bool({"avx512_bf16", "amx_bf16", "bf16"} & set(line.split()))
    except OSError:
        pass
    return False


def accelerator_available() -> bool:
    """A GPU (CUDA/ROCm, XPU or MPS) that the model could be moved to after loading."""
    xpu = getattr(torch, "xpu", None)
    mps = getattr(torch.backends, "mps", None)
    return bool(torch.cuda.is_available() or (xpu is not None and xpu.is_available())
                or (mps is not None and mps.is_available()))


def cpu_compute_dtype(stored: torch.dtype | None, device_map=None) -> torch.dtype | None:
    """The dtype to load a checkpoint stored in ``stored`` with when no dtype was asked for: fp32 instead of bf16
    when the model will run on a CPU without native bf16 (no accelerator, or ``device_map`` on the CPU); None keeps
    the stored dtype. Says so once in the log."""
    on_cpu = str(device_map) == "cpu" if device_map is not None else not accelerator_available()
    if stored != torch.bfloat16 or not on_cpu or cpu_has_native_bf16():
        return None
    logger.warning_once("zerank: the weights are stored in bf16 but this CPU has no native bf16 (AVX512-BF16, AMX or "
                        "Arm BF16), where bf16 runs several times slower than fp32: computing in fp32. Pass "
                        "model_kwargs={'dtype': torch.bfloat16} to keep bf16.")
    return torch.float32


class ZerankPreTrainedModel(Qwen3PreTrainedModel):
    config_class = ZerankConfig
    config: ZerankConfig

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """``PreTrainedModel.from_pretrained``; without a ``dtype``, a bf16 checkpoint that would run emulated on this
        CPU loads in fp32 (:func:`cpu_compute_dtype`)."""
        if kwargs.get("dtype") is None and kwargs.get("torch_dtype") is None:
            config = kwargs.get("config")
            if not isinstance(config, transformers.PretrainedConfig):
                hub = ("cache_dir", "force_download", "local_files_only", "token", "revision", "subfolder")
                config = ZerankConfig.from_pretrained(config or pretrained_model_name_or_path,
                                                      **{k: kwargs[k] for k in hub if k in kwargs})
            stored = getattr(config, "dtype", None)
            dtype = cpu_compute_dtype(getattr(torch, stored) if isinstance(stored, str) else stored,
                                      kwargs.get("device_map"))
            if dtype is not None:
                kwargs["dtype"] = dtype
        return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)


class ZerankForSequenceClassification(ZerankPreTrainedModel):
    """Qwen3 backbone whose last-token hidden state is projected on the "Yes" row of the LM head.

    ``forward`` returns ``logits`` of shape (batch, 1): the calibrated logit. With ``labels`` (relevance in [0, 1])
    it also returns the binary cross-entropy of those logits.

    At inference (no gradients, labels, position ids, embeddings or extra outputs) the batch goes through
    ``self.fast_path`` (``zerank_fast_path.FastPath``), which returns the same last-token hidden states with fewer
    tokens run, or declines when its cost rule finds the plain padded forward cheaper. Its settings
    (``zerank_fast_path.FastPathSettings``) are code defaults per device kind, overridden when loading with
    ``fast_path={...}``; fields of these settings in the config of an older package are read too.
    """

    def __init__(self, config: ZerankConfig, fast_path: FastPathSettings | dict | None = None):
        super().__init__(config)
        self.model = Qwen3Model(config)
        self.score = nn.Linear(config.hidden_size, 1, bias=False)
        if not isinstance(fast_path, FastPathSettings):
            fast_path = FastPathSettings.from_values(config, fast_path)
        self.fast_path = FastPath(config, fast_path)
        self._warned_unrendered = False
        self.post_init()

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        share_prefix: bool | None = None,
        max_batch_tokens: int | None = None,
        **kwargs,
    ) -> SequenceClassifierOutput:
        r"""
        share_prefix (`bool`, *optional*):
            Overrides the fast path's ``share_query_prefix`` for this call.
        max_batch_tokens (`int`, *optional*):
            Overrides the fast path's token budget of one forward batch (rows x longest row) for this call.
        """
        self.check_rendered(input_ids, attention_mask)
        if self._uses_fast_path(input_ids, position_ids, inputs_embeds, labels, kwargs):
            pooled = self.fast_path.pooled_hidden(self.model, input_ids, attention_mask, share_prefix=share_prefix,
                                                  max_batch_tokens=max_batch_tokens)
            if pooled is not None:
                return SequenceClassifierOutput(logits=self.calibrate(self.raw_logit(pooled)))

        if position_ids is None and attention_mask is not None:
            # Number real tokens from 0 in every row, so a left-padded row sees the positions it has unpadded.
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            use_cache=False,
            **kwargs,
        )
        hidden_states = outputs.last_hidden_state
        last = last_token_index(attention_mask, hidden_states.shape[1], hidden_states.device)
        pooled = hidden_states[torch.arange(hidden_states.shape[0], device=hidden_states.device), last]
        logits = self.calibrate(self.raw_logit(pooled))

        loss = None
        if labels is not None:
            loss = nn.functional.binary_cross_entropy_with_logits(
                logits.squeeze(-1), labels.to(logits.device, torch.float32).view(-1)
            )
        return SequenceClassifierOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )

    def raw_logit(self, hidden: torch.Tensor) -> torch.Tensor:
        """The "Yes" logit of hidden states (..., hidden) as (..., 1), computed in fp32."""
        return nn.functional.linear(hidden.float(), self.score.weight.float())

    def calibrate(self, raw_logit: torch.Tensor) -> torch.Tensor:
        """Map raw "Yes" logits to calibrated logits, whose sigmoid is the 0..1 relevance score."""
        return (raw_logit - self.config.score_bias) / self.config.score_temperature

    def check_rendered(self, input_ids: torch.Tensor | None, attention_mask: torch.Tensor | None) -> None:
        """Warn once when a row of ``input_ids`` does not begin and end as zerank's template renders a pair (for
        example ``tokenizer(query, document)`` with a tokenizer that lacks zerank's pair template)."""
        prefix, suffix = self.config.prompt_prefix_ids, self.config.prompt_suffix_ids
        if self._warned_unrendered or input_ids is None or input_ids.dim() != 2 or not (prefix and suffix):
            return
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        first = attention_mask.long().argmax(dim=-1, keepdim=True)
        last = last_token_index(attention_mask, input_ids.shape[1], input_ids.device).unsqueeze(-1)
        starts = first + torch.arange(len(prefix), device=input_ids.device)
        ends = last - len(suffix) + 1 + torch.arange(len(suffix), device=input_ids.device)
        width = input_ids.shape[1]
        rows_ok = ((last - first + 1) >= len(prefix) + len(suffix)).squeeze(-1)
        rows_ok &= (input_ids.gather(1, starts.clamp(0, width - 1)) == input_ids.new_tensor(prefix)).all(-1)
        rows_ok &= (input_ids.gather(1, ends.clamp(0, width - 1)) == input_ids.new_tensor(suffix)).all(-1)
        if not bool(rows_ok.all()):
            self._warned_unrendered = True
            logger.warning(
                "zerank got input ids that are not its rendered prompt (they should begin with %s and end with %s), "
                "so its scores are meaningless. Render pairs with zerank's template: CrossEncoder.predict, "
                "tokenizer(query, document) with the package's tokenizer, or zerank_st.encode_pairs.",
                prefix, suffix)

    def _uses_fast_path(self, input_ids, position_ids, inputs_embeds, labels, kwargs) -> bool:
        """Inference on plain 2-D token ids, nothing asked of the backbone but the last hidden states."""
        wants_outputs = any(kwargs.get(k) for k in ("output_hidden_states", "output_attentions"))
        plain_call = input_ids is not None and input_ids.dim() == 2 and inputs_embeds is None and position_ids is None
        inference = labels is None and not self.training and not torch.is_grad_enabled()
        return plain_call and inference and not wants_outputs and self.fast_path.supports()


def last_token_index(attention_mask: torch.Tensor | None, seq_len: int, device: torch.device) -> torch.Tensor:
    """Index of the last real token of each row: the rightmost position whose mask is 1.

    This is right for left padding (always the last column), right padding and no padding alike. Without a mask
    every row is taken to be unpadded.
    """
    if attention_mask is None:
        return torch.full((1,), seq_len - 1, device=device, dtype=torch.long)
    if not bool(attention_mask.any(dim=-1).all()):
        raise ValueError("Every row needs at least one real token, but the attention mask has an all-zero row.")
    positions = torch.arange(seq_len, device=attention_mask.device)
    return (positions * attention_mask.to(torch.long)).argmax(dim=-1).to(device)


__all__ = ["ZerankConfig", "ZerankForSequenceClassification", "ZerankPreTrainedModel"]
