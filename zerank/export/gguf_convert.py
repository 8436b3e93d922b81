"""The GGUF conversion itself, run in a child process with llama.cpp's converter importable.

``python -m zerank.export.gguf_convert HF_DIR OUT_FILE LLAMA_CPP_DIR OUTTYPE TEMPLATE_FILE [MODEL_NAME]``
converts ``HF_DIR`` (the plain one-label ``Qwen3ForSequenceClassification`` of ``zerank export --format vllm``, whose
``score.weight`` is zerank's calibrated "Yes" row) into ``OUT_FILE`` with llama.cpp's own Qwen3 converter
(``conversion.qwen.Qwen3Model`` of ``convert_hf_to_gguf.py``), used as a library: this module registers a subclass
for ``Qwen3ForSequenceClassification`` that changes only what a zerank reranker needs (``zerank.export.gguf``
explains the head and the metadata). It runs in its own process because llama.cpp's converter imports the
``gguf`` package from its own tree (``gguf-py``), which must not meet another ``gguf`` already imported.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

ARCHITECTURE = "Qwen3ForSequenceClassification"


def import_llama_cpp_converter(llama_cpp_dir: Path) -> None:
    """Put llama.cpp's converter package (``conversion``) and its ``gguf-py`` first on ``sys.path``, as
    ``convert_hf_to_gguf.py`` does."""
    for path in (llama_cpp_dir / "gguf-py", llama_cpp_dir):
        if str(path) not in sys.path:
            sys.path.insert(0, str(path))


def register_converter(template: str) -> type:
    """llama.cpp's Qwen3 converter, registered for the one-label sequence-classification export."""
    import gguf
    import torch
    from conversion.base import ModelBase
    from conversion.qwen import Qwen3Model

    from zerank.export.gguf import CLS_OUT_TENSOR, rerank_head, set_rerank_metadata

    @ModelBase.register(ARCHITECTURE)
    class ZerankRerankerModel(Qwen3Model):
        """Qwen3 with zerank's head: rank pooling, ``cls.output`` = [calibrated Yes row; zeros] in F32."""

        model_arch = gguf.MODEL_ARCH.QWEN3

        def _is_qwen3_reranker(self) -> bool:
            # Not Qwen3-Reranker's form (lowercase yes/no rows of an LM head): the head is score.weight itself.
            return False

        def set_vocab(self):
            # Qwen3's byte-level BPE, as Qwen2Model.set_vocab ends up writing without a sentencepiece model (it tries
            # sentencepiece first, which need not be installed); this writes the tokenizer's own chat template
            # (zerank's), which set_rerank_metadata drops.
            self._set_vocab_gpt2()
            set_rerank_metadata(self.gguf_writer, template)

        def modify_tensors(self, data_torch, name, bid):
            if name == "score.weight":
                yield CLS_OUT_TENSOR, rerank_head(data_torch.to(torch.float32))
                return
            yield from super().modify_tensors(data_torch, name, bid)

        def tensor_force_quant(self, name, new_name, bid, n_dims):
            if new_name == CLS_OUT_TENSOR:
                return gguf.GGMLQuantizationType.F32  # the score's last step stays exact at every file type
            return super().tensor_force_quant(name, new_name, bid, n_dims)

    return ZerankRerankerModel


def convert(hf_dir: Path, out_file: Path, llama_cpp_dir: Path, outtype: str, template: str,
            model_name: str | None = None) -> Path:
    import_llama_cpp_converter(llama_cpp_dir)
    import gguf
    import torch
    from conversion import get_model_architecture
    from conversion.base import ModelBase, ModelType

    register_converter(template)
    file_types = {"F32": gguf.LlamaFileType.ALL_F32, "F16": gguf.LlamaFileType.MOSTLY_F16,
                  "BF16": gguf.LlamaFileType.MOSTLY_BF16, "Q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}
    hparams = ModelBase.load_hparams(hf_dir, False)
    architecture = get_model_architecture(hparams, ModelType.TEXT)
    if architecture != ARCHITECTURE:
        raise ValueError(f"{hf_dir} is a {architecture}, not the {ARCHITECTURE} export of zerank.")
    model_class = ModelBase._model_classes[ModelType.TEXT][architecture]
    with torch.inference_mode():
        model = model_class(hf_dir, file_types[outtype], out_file, model_name=model_name)
        model.write()
    return out_file


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    hf, out, root, kind, template_file, *name = sys.argv[1:]
    convert(Path(hf), Path(out), Path(root), kind, Path(template_file).read_text(), name[0] if name else None)
    print(out)
