"""``beats``: BEATs (Chen et al. 2022, arXiv 2212.09058), checkpoint BEATs_iter3+ (AS2M), implemented here.

Written from the paper and Microsoft's reference code (microsoft/unilm ``beats/``) without fairseq; module
and parameter names follow the reference so that a published checkpoint ``{'cfg': ..., 'model': ...}``
loads with strict key matching, and the network is built from that ``cfg``.

Input 16 kHz mono, cut into at most three 10 s segments as for PaSST (``segments``): a clip of at most
10 s uses one segment, at most 20 s the mean of the first two, else the mean of all three. Each segment:
Kaldi fbank (128 bins, 25 ms window, 10 ms shift, waveform scaled by 2**15, normalised as
(x - 15.41663) / (2 * 6.55582); fp32, no gradient), 16 x 16 patch embedding (a 10 s segment gives 998
frames, so 62 time x 8 frequency patches, flattened time-major), layer norm, projection 512 -> 768,
convolutional positional embedding, then 12 post-norm transformer layers (deep norm, gated relative
position bias with 320 buckets and maximum distance 800). The segment's 768-d embedding is the mean over
its patch tokens (time x frequency) of the last layer's output (``model.pooling`` ``default`` and ``mean``;
``attention``: ``pooling.py``). Config key ``gradient_checkpointing`` checkpoints each layer (``recompute.py``).

Padding: the reference maps a sample-level padding mask onto the token sequence proportionally, which does
not follow frame and patch boundaries, so a clip's result changes with how much padding a batch adds.
Here the mask is computed from each segment's true length: the frames Kaldi would give the unpadded
segment (1 + (samples - 400) // 160) and the whole 16-frame time patches they fill (at least one). Masked
tokens are zeroed before the positional convolution and never attended to (as the reference does with
its mask), and are left out of the mean, so a segment's embedding equals the mean of the reference
``extract_features`` output for the unpadded segment, whatever the padding.

Not reproduced (training-time only): layer drop (``encoder_layerdrop``; DDP requires every parameter to
reach the output) and ``layer_wise_gradient_decay_ratio`` (layer-wise learning rates are config key
``finetune.layer_decay`` for every backbone, see ``encoder_layers``). Dropouts follow the checkpoint's cfg. A
fine-tuned checkpoint's AudioSet ``predictor`` is loaded with it and then removed: its output never
reaches the loss, and DDP requires every trained parameter to.
"""

from __future__ import annotations

import math
import pickle
from dataclasses import dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from dcase_t6.common.errors import UserError
from dcase_t6.models import weights as weight_files
from dcase_t6.models.audio import register, segments
from dcase_t6.models.audio.fbank import kaldi_fbank
from dcase_t6.models.audio.pooling import TokenPool
from dcase_t6.models.audio.recompute import run_blocks
from dcase_t6.models.depth import EncoderLayers

WEIGHTS_FILE = "BEATs_iter3_plus_AS2M.pt"
# The last direct (signed Azure blob, valid until 2034-04-05) link the unilm README gave for this file; the
# README now links a OneDrive share page instead, which a program cannot download.
WEIGHTS_URL = ("https://valle.blob.core.windows.net/share/BEATs/BEATs_iter3_plus_AS2M.pt?sv=2021-10-04"
               "&st=2024-04-04T07%3A15%3A11Z&se=2034-04-05T07%3A15%3A00Z&sr=c&sp=rl"
               "&sig=xH3MbkMqHPLBI5gN%2Frt9H4J8Ai%2BtUnkduo7KGpkLbdA%3D")
WEIGHTS_PAGE = "https://github.com/microsoft/unilm/tree/master/beats"
SAMPLE_RATE = 16000
SEGMENT_SAMPLES = 10 * SAMPLE_RATE
SEGMENTS = 3
FBANK_MEAN, FBANK_STD = 15.41663, 6.55582
FRAME_SAMPLES, HOP_SAMPLES = 400, 160  # Kaldi fbank: 25 ms window, 10 ms shift at 16 kHz
MEL_BINS = 128
# The architecture of the published BEATs_iter3+ checkpoints (their cfg; dropouts are left to the defaults).
PUBLISHED_CONFIG = {
    "input_patch_size": 16, "embed_dim": 512, "conv_bias": False, "encoder_layers": 12, "encoder_embed_dim": 768,
    "encoder_ffn_embed_dim": 3072, "encoder_attention_heads": 12, "activation_fn": "gelu", "layer_norm_first": False,
    "deep_norm": True, "conv_pos": 128, "conv_pos_groups": 16, "relative_position_embedding": True,
    "num_buckets": 320, "max_distance": 800, "gru_rel_pos": True, "finetuned_model": False,
}
_REQUIRED = ("input_patch_size", "embed_dim", "encoder_layers", "encoder_embed_dim", "encoder_attention_heads")


@dataclass(frozen=True)
class BEATsConfig:
    """The cfg of a BEATs checkpoint (defaults: the reference's ``BEATsConfig``); unknown keys are ignored."""

    input_patch_size: int = -1
    embed_dim: int = 512
    conv_bias: bool = False
    encoder_layers: int = 12
    encoder_embed_dim: int = 768
    encoder_ffn_embed_dim: int = 3072
    encoder_attention_heads: int = 12
    activation_fn: str = "gelu"
    layer_norm_first: bool = False
    deep_norm: bool = False
    dropout: float = 0.1
    attention_dropout: float = 0.1
    activation_dropout: float = 0.0
    dropout_input: float = 0.0
    conv_pos: int = 128
    conv_pos_groups: int = 16
    relative_position_embedding: bool = False
    num_buckets: int = 320
    max_distance: int = 1280
    gru_rel_pos: bool = False
    finetuned_model: bool = False
    predictor_class: int = 527

    @classmethod
    def from_dict(cls, cfg: dict, where: str) -> BEATsConfig:
        """Read a checkpoint's cfg dict; ``where`` names the file in the error when it is not a BEATs cfg.

        Args:
            cfg: the checkpoint's ``cfg`` entry.
            where: the file, for messages.

        Returns:
            The configuration.
        """
        if not isinstance(cfg, dict) or any(key not in cfg for key in _REQUIRED):
            missing = ", ".join(key for key in _REQUIRED if not isinstance(cfg, dict) or key not in cfg)
            raise UserError(f"{where}: its cfg is not a BEATs model cfg (missing {missing}); {_DOWNLOAD_HINT}")
        config = cls(**{f.name: cfg[f.name] for f in fields(cls) if f.name in cfg})
        if config.activation_fn != "gelu" or (config.deep_norm and config.layer_norm_first):
            raise UserError(f"{where}: a BEATs variant this implementation does not support (activation "
                            f"{config.activation_fn}, deep_norm {config.deep_norm}, layer_norm_first "
                            f"{config.layer_norm_first}); {_DOWNLOAD_HINT}")
        if config.encoder_embed_dim % config.encoder_attention_heads or MEL_BINS % config.input_patch_size:
            raise UserError(f"{where}: inconsistent BEATs cfg (dimension {config.encoder_embed_dim}, heads "
                            f"{config.encoder_attention_heads}, patch {config.input_patch_size}); {_DOWNLOAD_HINT}")
        return config


_DOWNLOAD_HINT = f"download {WEIGHTS_FILE} ({WEIGHTS_URL} or the link in {WEIGHTS_PAGE})"


@register("beats")
class BEATs(nn.Module):
    """BEATs audio backbone; ``weights``: a checkpoint file, ``"download"`` (published file, cached) or ``"random"``."""

    sample_rate = SAMPLE_RATE
    output_dim = 768

    def __init__(self, weights: str | None = "download", pooling: str = "default", **_ignored):
        super().__init__()
        weights = weights or "download"
        if weights == "random":
            config, state = BEATsConfig.from_dict(PUBLISHED_CONFIG, "the published configuration"), None
            self.weights_source = "random initialisation (no pretrained weights)"
        else:
            path = (weight_files.fetch(WEIGHTS_URL, "BEATs", "--audio-weights", WEIGHTS_FILE, WEIGHTS_PAGE)
                    if weights == "download" else weight_files.local_file(weights, "BEATs", "--audio-weights"))
            config, state = _read_checkpoint(path)
            self.weights_source = str(path)
        self.net = BEATsModel(config)
        if state is not None:
            try:
                self.net.load_state_dict(state, strict=True)
            except (RuntimeError, KeyError, TypeError) as err:
                raise UserError(f"{self.weights_source}: not a BEATs checkpoint matching its cfg "
                                f"({_first_problem(err)}); {_DOWNLOAD_HINT}") from None
        self.net.predictor = None  # the AudioSet classifier of a fine-tuned checkpoint never reaches the loss
        self.output_dim = config.encoder_embed_dim
        self.pool = TokenPool(pooling, self.output_dim, "beats")  # default: the masked mean below (as `mean`)

    def forward(self, waveforms: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Clip embeddings.

        Args:
            waveforms: (batch, samples) zero-padded 16 kHz clips.
            lengths: (batch,) true lengths in samples.

        Returns:
            (batch, output_dim) the mean of each clip's segment embeddings.
        """
        cut, owners, counts = segments.segment_clips(waveforms, lengths, SEGMENT_SAMPLES, SEGMENTS)
        true_lengths = segments.segment_lengths(lengths, SEGMENT_SAMPLES, SEGMENTS)
        keep = max(int(true_lengths.max()), samples_for_patches(1, self.net.patch))  # no frames beyond the longest
        with torch.no_grad(), torch.autocast(cut.device.type, enabled=False):  # the front end in fp32
            fbank = self.net.preprocess(cut[:, :keep].float())
        patches = fbank.shape[1] // self.net.patch
        padding = token_padding_mask(true_lengths, patches, MEL_BINS // self.net.patch, self.net.patch)
        tokens = self.net.extract_features(fbank, padding)
        if self.pool.kind == "default":
            valid = (~padding).unsqueeze(-1)
            features = (tokens.float() * valid).sum(1) / valid.sum(1)
        else:
            features = self.pool(tokens, padding)
        return segments.mean_of_segments(features, owners, counts)

    def compile_network(self, **options) -> None:
        """``torch.compile`` each encoder layer in place (regional compilation: compiled once, reused by the
        layers alike); the fbank front end, patch embedding and positional convolution stay eager."""
        for layer in self.net.encoder.layers:
            layer.compile(**options)

    def encoder_layers(self) -> EncoderLayers:
        """The encoder layers; below them the patch embedding, its layer norm and projection, the positional
        convolution and (post-norm) the encoder's input layer norm. The relative-position table, which every
        layer shares, belongs to the first layer."""
        net, encoder = self.net, self.net.encoder
        return EncoderLayers.of([net.patch_embedding, net.layer_norm, net.post_extract_proj, encoder.pos_conv,
                                 None if encoder.layer_norm_first else encoder.layer_norm], encoder.layers)


def samples_for_patches(patches: int, patch: int = 16) -> int:
    """Fewest samples whose Kaldi frames fill ``patches`` time patches of ``patch`` frames.

    Args:
        patches: time patches wanted.
        patch: frames per patch.

    Returns:
        Samples (400 for the first frame, 160 for each further one).
    """
    return FRAME_SAMPLES + (patches * patch - 1) * HOP_SAMPLES


def token_padding_mask(lengths: torch.Tensor, time_patches: int, frequency_patches: int,
                       patch: int = 16) -> torch.Tensor:
    """Which tokens of a batch of segments lie beyond each segment's own audio (True: padding).

    A segment of ``n`` true samples has ``1 + (n - 400) // 160`` Kaldi frames when alone, and the patch
    embedding uses the whole patches they fill (at least one); tokens are time-major, ``frequency_patches``
    per time patch.

    Args:
        lengths: (segments,) true samples of each segment.
        time_patches: time patches of the (padded) batch.
        frequency_patches: tokens per time patch.
        patch: frames per time patch.

    Returns:
        (segments, time_patches * frequency_patches) boolean mask.
    """
    frames = torch.div(lengths - FRAME_SAMPLES, HOP_SAMPLES, rounding_mode="floor") + 1
    valid = torch.clamp(torch.div(frames, patch, rounding_mode="floor"), 1, time_patches)
    beyond = torch.arange(time_patches, device=lengths.device)[None, :] >= valid[:, None]
    return beyond.repeat_interleave(frequency_patches, dim=1)


def relative_position_bucket(relative: torch.Tensor, num_buckets: int, max_distance: int) -> torch.Tensor:
    """T5-style bidirectional buckets of relative positions (key minus query), as BEATs uses them.

    Half of the buckets are for keys after the query. Within a half, distances below a quarter of the
    buckets have one bucket each; larger ones share buckets spaced logarithmically up to ``max_distance``,
    and farther ones the last bucket.

    Args:
        relative: integer tensor of relative positions.
        num_buckets: buckets in all.
        max_distance: distance from which on all share the last bucket of their half.

    Returns:
        Bucket indices, same shape, in [0, num_buckets).
    """
    half = num_buckets // 2
    exact = half // 2
    offset = (relative > 0).long() * half
    distance = relative.abs()
    scaled = torch.log(distance.clamp(min=1).float() / exact) / math.log(max_distance / exact) * (half - exact)
    logarithmic = torch.clamp(exact + scaled.long(), max=half - 1)
    return offset + torch.where(distance < exact, distance, logarithmic)


class BEATsModel(nn.Module):
    """The BEATs network with the reference's module names (checkpoint keys); ``predictor`` only if fine-tuned."""

    def __init__(self, config: BEATsConfig):
        super().__init__()
        self.config = config
        self.patch = config.input_patch_size
        self.patch_embedding = nn.Conv2d(1, config.embed_dim, kernel_size=self.patch, stride=self.patch,
                                         bias=config.conv_bias)
        self.layer_norm = nn.LayerNorm(config.embed_dim)
        self.post_extract_proj = nn.Linear(config.embed_dim, config.encoder_embed_dim) \
            if config.embed_dim != config.encoder_embed_dim else None
        self.dropout_input = nn.Dropout(config.dropout_input)
        self.encoder = Encoder(config)
        self.predictor = nn.Linear(config.encoder_embed_dim, config.predictor_class) if config.finetuned_model \
            else None

    @staticmethod
    def preprocess(waveforms: torch.Tensor) -> torch.Tensor:
        """Normalised Kaldi fbank of each waveform.

        Args:
            waveforms: (batch, samples) 16 kHz waveforms in [-1, 1].

        Returns:
            (batch, frames, 128) features.
        """
        fbank = kaldi_fbank(waveforms * 2 ** 15, MEL_BINS, window="povey")  # all rows at once (``fbank.py``)
        return (fbank - FBANK_MEAN) / (2 * FBANK_STD)

    def extract_features(self, fbank: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Last-layer token features, as the reference ``extract_features`` of a model without predictor.

        Args:
            fbank: (batch, frames, 128) output of ``preprocess``; frames beyond whole patches are unused.
            padding_mask: (batch, tokens) True for padding tokens (``token_padding_mask``), or None.

        Returns:
            (batch, tokens, encoder_embed_dim), tokens time-major (time patch, then frequency patch).
        """
        features = self.patch_embedding(fbank.unsqueeze(1))  # (batch, embed, time patches, frequency patches)
        features = self.layer_norm(features.flatten(2).transpose(1, 2))
        if self.post_extract_proj is not None:
            features = self.post_extract_proj(features)
        return self.encoder(self.dropout_input(features), padding_mask)


class _DropLast(nn.Module):
    """Removes the last step: an even-kernel convolution padded by kernel // 2 on both sides gives one too many."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :, :-1]


class WeightNormConv1d(nn.Module):
    """Grouped, same-length Conv1d whose weight is ``weight_g * weight_v / |weight_v|``, normed per kernel position.

    Parameters ``weight_g`` (1, 1, kernel), ``weight_v`` and ``bias``: the keys of a weight-normalised
    (over dim 2) convolution in the reference checkpoints. An even kernel gives one step too many (see
    ``_DropLast``).
    """

    def __init__(self, channels: int, kernel: int, groups: int):
        super().__init__()
        self.padding, self.groups = kernel // 2, groups
        direction = torch.empty(channels, channels // groups, kernel)
        nn.init.normal_(direction, mean=0.0, std=math.sqrt(4.0 / (kernel * channels)))
        self.weight_g = nn.Parameter(_norm_per_position(direction))
        self.weight_v = nn.Parameter(direction)
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight_v * (self.weight_g / _norm_per_position(self.weight_v))
        return F.conv1d(x, weight, self.bias, padding=self.padding, groups=self.groups)


def _norm_per_position(weight: torch.Tensor) -> torch.Tensor:
    return weight.norm(dim=(0, 1), keepdim=True)


class Encoder(nn.Module):
    """Positional convolution, layer norm and the transformer layers (post-norm unless ``layer_norm_first``)."""

    gradient_checkpointing = False  # recompute.enable sets it

    def __init__(self, config: BEATsConfig):
        super().__init__()
        dim = config.encoder_embed_dim
        self.pos_conv = nn.Sequential(WeightNormConv1d(dim, config.conv_pos, config.conv_pos_groups),
                                      *([_DropLast()] if config.conv_pos % 2 == 0 else []), nn.GELU())
        self.layers = nn.ModuleList(EncoderLayer(config) for _ in range(config.encoder_layers))
        if config.relative_position_embedding:  # one table, shared by every layer (and in every layer's keys)
            shared = self.layers[0].self_attn.relative_attention_bias
            for layer in self.layers[1:]:
                layer.self_attn.relative_attention_bias = shared
        self.layer_norm = nn.LayerNorm(dim)
        self.layer_norm_first = config.layer_norm_first
        self.dropout = nn.Dropout(config.dropout)
        _initialise(self, config)

    def forward(self, x: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(batch, tokens, dim) -> (batch, tokens, dim); ``padding_mask`` (batch, tokens) True for padding."""
        if padding_mask is not None:
            x = x.masked_fill(padding_mask.unsqueeze(-1), 0.0)
        x = x + self.pos_conv(x.transpose(1, 2)).transpose(1, 2)
        if not self.layer_norm_first:
            x = self.layer_norm(x)
        x = self.dropout(x)
        attention = self.layers[0].self_attn
        position_bias = attention.position_bias(x.shape[1]) if attention.relative_attention_bias is not None \
            else None
        x = run_blocks(self.layers, x, self.gradient_checkpointing, padding_mask, position_bias)
        return self.layer_norm(x) if self.layer_norm_first else x


class EncoderLayer(nn.Module):
    """Self-attention and feed-forward blocks; post-norm residuals scaled by (2 N)^(1/4) under deep norm."""

    def __init__(self, config: BEATsConfig):
        super().__init__()
        dim = config.encoder_embed_dim
        self.self_attn = SelfAttention(config)
        self.self_attn_layer_norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, config.encoder_ffn_embed_dim)
        self.fc2 = nn.Linear(config.encoder_ffn_embed_dim, dim)
        self.final_layer_norm = nn.LayerNorm(dim)
        self.dropout1, self.dropout3 = nn.Dropout(config.dropout), nn.Dropout(config.dropout)
        self.dropout2 = nn.Dropout(config.activation_dropout)
        self.layer_norm_first = config.layer_norm_first
        self.residual_scale = (2 * config.encoder_layers) ** 0.25 if config.deep_norm else 1.0

    def _feed_forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = F.gelu(self.fc1(x).float()).type_as(x)  # the reference's gelu runs in fp32
        return self.dropout3(self.fc2(self.dropout2(hidden)))

    def forward(self, x: torch.Tensor, padding_mask: torch.Tensor | None,
                position_bias: torch.Tensor | None) -> torch.Tensor:
        if self.layer_norm_first:
            x = x + self.dropout1(self.self_attn(self.self_attn_layer_norm(x), padding_mask, position_bias))
            return x + self._feed_forward(self.final_layer_norm(x))
        attended = self.dropout1(self.self_attn(x, padding_mask, position_bias))
        x = self.self_attn_layer_norm(x * self.residual_scale + attended)
        return self.final_layer_norm(x * self.residual_scale + self._feed_forward(x))


class SelfAttention(nn.Module):
    """Multi-head self-attention with a relative position bias, gated per query and head when ``gru_rel_pos``.

    The gate of query ``i`` in head ``h``: two sigmoids ``a, b`` of sums of four outputs each of
    ``grep_linear`` applied to the (unscaled) query; the bias row is multiplied by ``a * (b * grep_a[h] - 1) + 2``.
    """

    def __init__(self, config: BEATsConfig):
        super().__init__()
        dim, self.heads = config.encoder_embed_dim, config.encoder_attention_heads
        self.head_dim = dim // self.heads
        self.k_proj, self.v_proj = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.q_proj, self.out_proj = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.num_buckets, self.max_distance = config.num_buckets, config.max_distance
        self.relative_attention_bias = nn.Embedding(config.num_buckets, self.heads) \
            if config.relative_position_embedding else None
        if config.gru_rel_pos:
            self.grep_linear = nn.Linear(self.head_dim, 8)
            self.grep_a = nn.Parameter(torch.ones(1, self.heads, 1, 1))
        self.gated = config.gru_rel_pos
        self.attention_dropout = config.attention_dropout

    def position_bias(self, tokens: int) -> torch.Tensor:
        """(heads, tokens, tokens) bias of key ``j`` for query ``i`` from the bucket of ``j - i``."""
        positions = torch.arange(tokens, device=self.relative_attention_bias.weight.device)
        buckets = relative_position_bucket(positions[None, :] - positions[:, None], self.num_buckets,
                                           self.max_distance)
        return self.relative_attention_bias(buckets).permute(2, 0, 1)

    def forward(self, x: torch.Tensor, padding_mask: torch.Tensor | None,
                position_bias: torch.Tensor | None) -> torch.Tensor:
        batch, tokens, dim = x.shape

        def heads(projected: torch.Tensor) -> torch.Tensor:
            return projected.view(batch, tokens, self.heads, self.head_dim).transpose(1, 2)

        query, key, value = heads(self.q_proj(x)), heads(self.k_proj(x)), heads(self.v_proj(x))
        bias = None
        if position_bias is not None:
            bias = position_bias.unsqueeze(0)
            if self.gated:
                gate_a, gate_b = torch.sigmoid(self.grep_linear(query).view(batch, self.heads, tokens, 2, 4)
                                               .sum(-1)).unbind(-1)
                bias = (gate_a * (gate_b * self.grep_a.squeeze(-1) - 1.0) + 2.0).unsqueeze(-1) * bias
        if padding_mask is not None:
            blocked = padding_mask[:, None, None, :]
            bias = torch.zeros(blocked.shape, dtype=query.dtype, device=x.device) if bias is None else bias
            bias = bias.masked_fill(blocked, float("-inf"))
        if bias is not None:
            bias = bias.to(query.dtype)
        attended = F.scaled_dot_product_attention(query, key, value, attn_mask=bias,
                                                  dropout_p=self.attention_dropout if self.training else 0.0)
        return self.out_proj(attended.transpose(1, 2).reshape(batch, tokens, dim))


def _initialise(encoder: Encoder, config: BEATsConfig) -> None:
    """Random initialisation like the reference's: BERT-style normal(0.02), then deep-norm scaled Xavier."""
    for module in encoder.modules():
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
    if config.deep_norm:
        beta = (8 * config.encoder_layers) ** -0.25
        for layer in encoder.layers:
            attention = layer.self_attn
            for linear, gain in ((attention.k_proj, 1.0), (attention.v_proj, beta), (attention.q_proj, 1.0),
                                 (attention.out_proj, beta), (layer.fc1, beta), (layer.fc2, beta)):
                nn.init.xavier_normal_(linear.weight, gain=gain)


def _read_checkpoint(path: Path) -> tuple[BEATsConfig, dict]:
    """The cfg and state dict of a published-layout BEATs checkpoint; a one-line UserError for anything else."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"{path}: not a readable BEATs checkpoint ({first}); {_DOWNLOAD_HINT}") from None
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("model"), dict) or "cfg" not in checkpoint:
        found = f"keys {', '.join(map(str, list(checkpoint)[:4]))}..." if isinstance(checkpoint, dict) \
            else type(checkpoint).__name__
        raise UserError(f"{path}: not a BEATs checkpoint (expected {{'cfg': ..., 'model': ...}}, found {found}); "
                        f"{_DOWNLOAD_HINT}")
    return BEATsConfig.from_dict(checkpoint["cfg"], str(path)), checkpoint["model"]


def _first_problem(err: Exception) -> str:
    """The first specific line of a ``load_state_dict`` error (its first line only names the model), shortened."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    line = lines[1] if len(lines) > 1 else (lines[0] if lines else type(err).__name__)
    return line if len(line) <= 200 else line[:197] + "..."
