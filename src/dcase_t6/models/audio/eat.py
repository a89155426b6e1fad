"""``eat``: EAT-base (Efficient Audio Transformer, epoch-30 AudioSet pre-training), our own code, no fairseq.

Input 16 kHz mono, cut into at most three 10 s segments (``segments.py``: a clip of at most 10 s uses the
first, at most 20 s the mean of the first two, else the mean of all three). Each segment: its true samples
only, their mean removed, then Kaldi fbank (torchaudio: 128 bins, 25 ms Hanning window, 10 ms shift, HTK
mel, no energy, no dither), the frames zero-padded (or cut) to 1024 exactly as the original pads a short
clip, then (x + 4.268) / (2 * 4.569) (fp32, no gradient). A segment shorter than one 25 ms window has no
frame and is all padding. Because each segment's fbank comes from its true samples, zero padding added by
batching never changes a clip's embedding.

The encoder (EAT, a data2vec 2.0 image encoder on the 1024 x 128 spectrogram): 16 x 16 patches (conv,
stride 16) in a 64 x 8 grid, plus a fixed 2-D sin-cos table (first half of the channels encodes the
frequency patch, second half the time patch), a learned CLS token (without position) in front, LayerNorm,
then 12 post-norm transformer blocks (768 wide, 12 heads, MLP 3072, GELU, LayerNorm eps 1e-6:
``x = norm1(x + attention(x)); x = norm2(x + mlp(x))``). The 768-d output is the final block's CLS token
(``model.pooling`` ``default``; ``mean`` / ``attention`` pool the patch tokens instead, ``pooling.py``). Config key
``gradient_checkpointing`` checkpoints each block (``recompute.py``).

Weights: the Hugging Face port (a hub id or a folder with ``model.safetensors``), or the original fairseq
pre-training checkpoint ``EAT-base_epoch30_pt.pt`` (read by torch's ``weights_only`` unpickler; fairseq's
pickled configuration objects, if any, become inert placeholders and are dropped, nothing in the file is
run). Both layouts must match key for key; only the listed pre-training leftovers (the EMA teacher, the
CNN decoder) and the fine-tuned port's AudioSet classifier are dropped.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from dcase_t6.common.errors import UserError
from dcase_t6.models import weights as weight_files
from dcase_t6.models.audio import fbank, register, segments
from dcase_t6.models.audio.pooling import TokenPool, time_padding
from dcase_t6.models.audio.recompute import run_blocks
from dcase_t6.models.depth import EncoderLayers

HUB_ID = "worstchan/EAT-base_epoch30_pretrain"
FAIRSEQ_FILE = "EAT-base_epoch30_pt.pt"
FAIRSEQ_URL = "https://drive.google.com/file/d/19hfzLgHCkyqTOYmHt8dqVa9nm-weBq4f/view?usp=sharing"
OPTION = "--audio-weights"
SAMPLE_RATE = 16000
SEGMENT_SAMPLES = 10 * SAMPLE_RATE
SEGMENTS = 3
FRAMES, MEL_BINS = 1024, 128  # fbank frames of a 10 s segment (after padding) and mel bins
FBANK_MEAN, FBANK_STD = -4.268, 4.569  # the original's AudioSet normalisation: (x - mean) / (2 * std)
PATCH = 16
TIME_PATCHES, FREQUENCY_PATCHES = FRAMES // PATCH, MEL_BINS // PATCH  # 64 x 8
PUBLISHED_TIME_PATCHES = 768  # rows of the published position table: 768 x 8 (the original's max_length)
DIM, DEPTH, HEADS, MLP = 768, 12, 12, 3072
NORM_EPS = 1e-6
POSITION_TOLERANCE = 1e-3  # the published table is the sin-cos formula computed in float32

GET = (f"get the Hugging Face port {HUB_ID} (a folder with model.safetensors and config.json) "
       f"or the original {FAIRSEQ_FILE} from {FAIRSEQ_URL}")

# Our names -> the names inside one block of both published layouts (the original's AltBlock).
_BLOCK_NAMES = {
    "qkv": "attn.qkv", "attention_out": "attn.proj", "attention_norm": "norm1",
    "hidden": "mlp.fc1", "output": "mlp.fc2", "output_norm": "norm2",
}
# Our top-level names -> (Hugging Face port name, fairseq original name), without ".weight"/".bias".
_TOP_NAMES = {
    "patch_embed": ("model.local_encoder.proj", "modality_encoders.IMAGE.local_encoder.proj"),
    "input_norm": ("model.pre_norm", "modality_encoders.IMAGE.context_encoder.norm"),
}
_CLS = ("model.extra_tokens", "modality_encoders.IMAGE.extra_tokens")
_POSITIONS = ("model.fixed_positional_encoder.positions", "modality_encoders.IMAGE.fixed_positional_encoder.positions")
# Keys a published file may carry that never reach the embedding, dropped by exact name.
_UNUSED_PORT_KEYS = frozenset(  # the fine-tuned port's AudioSet classifier (fc_norm, head)
    f"model.{layer}.{kind}" for layer in ("fc_norm", "head") for kind in ("weight", "bias"))
_UNUSED_FAIRSEQ_KEYS = frozenset(  # pre-training only: the EMA teacher's parameters, the 6-layer CNN decoder
    ["_ema", "modality_encoders.IMAGE.decoder.proj.weight", "modality_encoders.IMAGE.decoder.proj.bias"]
    + [f"modality_encoders.IMAGE.decoder.blocks.{layer}.0.{kind}" for layer in range(6) for kind in ("weight", "bias")])


@register("eat")
class EAT(nn.Module):
    """EAT-base audio backbone; ``weights``: ``"download"`` (the original file if it has been put at
    ``<cache>/weights/EAT-base_epoch30_pt.pt``, else the Hugging Face port, fetched once and then read from the
    Hugging Face cache), a hub id, a local folder or file of either published layout, or ``"random"``."""

    sample_rate = SAMPLE_RATE
    output_dim = DIM
    gradient_checkpointing = False  # recompute.enable sets it

    def __init__(self, weights: str | None = "download", pooling: str = "default", **_ignored):
        super().__init__()
        self.patch_embed = nn.Conv2d(1, DIM, kernel_size=PATCH, stride=PATCH)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, DIM))
        positions = sincos_positions(PUBLISHED_TIME_PATCHES, FREQUENCY_PATCHES)[: TIME_PATCHES * FREQUENCY_PATCHES]
        self.register_buffer("positions", positions.unsqueeze(0))  # saved: a reload gives the very same numbers
        self.input_norm = nn.LayerNorm(DIM, eps=NORM_EPS)
        self.blocks = nn.ModuleList(_Block() for _ in range(DEPTH))
        if weights == "random":  # otherwise every parameter is overwritten by a strict load
            self._initialise()
        self.weights_source = _load_weights(self, weights or "download")
        self.pool = TokenPool(pooling, DIM, "eat")  # after the strict load: an attention query is not in the files

    def forward(self, waveforms: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Clip embeddings.

        Args:
            waveforms: (batch, samples) zero-padded 16 kHz clips.
            lengths: (batch,) true lengths in samples.

        Returns:
            (batch, 768) the mean over each clip's segments of the final block's CLS token (``model.pooling``
            ``default``; ``mean`` and ``attention`` pool the patch tokens of the time patches that hold fbank
            frames of the segment's true samples, see ``pooling.py``).
        """
        cut, owners, counts = segments.segment_clips(waveforms, lengths, SEGMENT_SAMPLES, SEGMENTS)
        true_lengths = segments.segment_lengths(lengths, SEGMENT_SAMPLES, SEGMENTS)
        with torch.no_grad(), torch.autocast(cut.device.type, enabled=False):  # the front end in fp32
            spectrograms = fbank_input(cut.float(), true_lengths)
        frames = torch.clamp(fbank.frame_count(true_lengths.to(cut.device)), max=FRAMES)
        valid = torch.clamp(torch.div(frames + PATCH - 1, PATCH, rounding_mode="floor"), min=1)
        padding = time_padding(valid, torch.arange(TIME_PATCHES), FREQUENCY_PATCHES, time_major=True)
        return segments.mean_of_segments(self.encode(spectrograms, padding), owners, counts)

    def encode(self, spectrograms: torch.Tensor, padding: torch.Tensor | None = None) -> torch.Tensor:
        """The transformer on normalised spectrograms, pooled.

        Args:
            spectrograms: (segments, 1, 1024, 128) as ``fbank_input`` makes them.
            padding: (segments, 512) True for the patch tokens of padding (``mean`` / ``attention`` pooling only).

        Returns:
            (segments, 768) the final block's CLS token of each (``default``), or its pooled patch tokens.
        """
        patches = self.patch_embed(spectrograms).flatten(2).transpose(1, 2)  # row t * 8 + f of the 64 x 8 grid
        tokens = torch.cat([self.cls_token.expand(len(patches), -1, -1), patches + self.positions], dim=1)
        tokens = run_blocks(self.blocks, self.input_norm(tokens), self.gradient_checkpointing)
        return tokens[:, 0] if self.pool.kind == "default" else self.pool(tokens[:, 1:], padding)

    def compile_network(self, **options) -> None:
        """``torch.compile`` each transformer block in place (regional compilation: the block's code is compiled
        once and reused by every block); the fbank front end and patch embedding stay eager."""
        for block in self.blocks:
            block.compile(**options)

    def encoder_layers(self) -> EncoderLayers:
        """The 12 blocks; below them the patch embedding, the CLS token and the input norm (the sin-cos positions
        are a fixed buffer)."""
        return EncoderLayers.of([self.patch_embed, self.cls_token, self.input_norm], self.blocks)

    def _initialise(self) -> None:
        """Random start (used as is only with ``weights="random"``): the original's kinds of initialisation."""
        nn.init.xavier_uniform_(self.patch_embed.weight.view(DIM, -1))
        nn.init.zeros_(self.patch_embed.bias)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for module in self.blocks.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)


class _Block(nn.Module):
    """One post-norm transformer block: ``x = norm1(x + attention(x)); x = norm2(x + mlp(x))``."""

    def __init__(self):
        super().__init__()
        self.qkv = nn.Linear(DIM, 3 * DIM)
        self.attention_out = nn.Linear(DIM, DIM)
        self.attention_norm = nn.LayerNorm(DIM, eps=NORM_EPS)
        self.hidden = nn.Linear(DIM, MLP)
        self.output = nn.Linear(MLP, DIM)
        self.output_norm = nn.LayerNorm(DIM, eps=NORM_EPS)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        batch, count, _ = tokens.shape
        query, key, value = self.qkv(tokens).view(batch, count, 3, HEADS, DIM // HEADS).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(query, key, value)  # softmax(q k^T / sqrt(64)) v per head
        tokens = self.attention_norm(tokens + self.attention_out(attended.transpose(1, 2).reshape(batch, count, DIM)))
        return self.output_norm(tokens + self.output(F.gelu(self.hidden(tokens))))


def fbank_input(cut: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """EAT's normalised input for each segment, computed from its true samples only.

    Args:
        cut: (segments, samples) zero-padded 16 kHz segments (``segments.segment_clips``).
        lengths: (segments,) true samples in each (``segments.segment_lengths``).

    Returns:
        (segments, 1, 1024, 128): fbank of ``samples - mean`` (at most 1024 frames), zero frames after it,
        then ``(x + 4.268) / (2 * 4.569)``, as the original prepares a clip.
    """
    frames = min(FRAMES, fbank.frame_count(cut.shape[-1]))
    lengths = lengths.to(cut.device)
    valid = torch.clamp(fbank.frame_count(lengths), max=FRAMES)  # frames of the true samples
    true = torch.arange(cut.shape[-1], device=cut.device) < lengths.unsqueeze(1)
    means = (cut * true).sum(1, keepdim=True) / lengths.clamp_min(1).unsqueeze(1)
    # frames inside a segment's true samples only see those samples; the others are zeroed below
    features = fbank.kaldi_fbank(cut[:, : max(0, frames - 1) * fbank.HOP_SAMPLES + fbank.FRAME_SAMPLES] - means,
                                 MEL_BINS, window="hanning")[:, :frames]
    spectrograms = cut.new_zeros(len(cut), FRAMES, MEL_BINS)
    spectrograms[:, :frames] = features * (torch.arange(frames, device=cut.device) < valid.unsqueeze(1)).unsqueeze(-1)
    return ((spectrograms - FBANK_MEAN) / (2 * FBANK_STD)).unsqueeze(1)


def sincos_positions(time_steps: int, frequency_steps: int, dim: int = DIM) -> torch.Tensor:
    """The fixed 2-D sin-cos position table of EAT (MAE's formula on a time x frequency patch grid).

    Row ``t * frequency_steps + f`` is ``[sin(f w), cos(f w), sin(t w), cos(t w)]`` with
    ``w_k = 10000 ** (-k / (dim / 4))`` for ``k < dim / 4``: the first half of the channels encodes the
    frequency patch, the second half the time patch.

    Args:
        time_steps: patches along time.
        frequency_steps: patches along frequency.
        dim: channels (a multiple of 4).

    Returns:
        (time_steps * frequency_steps, dim) float32 table.
    """
    quarter = dim // 4
    frequencies = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    time = torch.arange(time_steps, dtype=torch.float64).repeat_interleave(frequency_steps)
    frequency = torch.arange(frequency_steps, dtype=torch.float64).repeat(time_steps)

    def encode(position: torch.Tensor) -> torch.Tensor:
        angles = position[:, None] * frequencies[None, :]
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    return torch.cat([encode(frequency), encode(time)], dim=1).float()


# ----------------------------------------------------------------------------------------------- weights


def _load_weights(model: EAT, weights: str) -> str:
    """Load pretrained weights into ``model``; returns where they came from."""
    if weights == "random":
        return "random initialisation (no pretrained weights)"
    if weights == "download":
        placed = weight_files.cache_dir() / FAIRSEQ_FILE
        source = placed if placed.is_file() else _hub_snapshot(HUB_ID)
    else:
        local = Path(weights).expanduser()
        if local.exists():
            source = local
        elif _looks_like_hub_id(weights):
            source = _hub_snapshot(weights)
        else:
            source = weight_files.local_file(weights, "EAT", OPTION)  # raises: not found
    state, path = _read(source)
    model.load_state_dict(_to_our_names(state, model, path), strict=True)
    return str(path)


def _looks_like_hub_id(text: str) -> bool:
    suffixes = (".pt", ".pth", ".ckpt", ".bin", ".safetensors")
    return re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", text) is not None and not text.endswith(suffixes)


def _hub_snapshot(hub_id: str) -> Path:
    """The Hugging Face port's folder: downloaded once, then from the Hugging Face cache (offline too)."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError as err:
        raise UserError(f"the eat backbone needs huggingface_hub to fetch {hub_id} ({err}); install it, or pass "
                        f"{OPTION} with a local folder or {FAIRSEQ_FILE}") from None
    try:
        return Path(snapshot_download(hub_id, allow_patterns=["model.safetensors", "config.json"]))
    except (OSError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        placed = weight_files.cache_dir() / FAIRSEQ_FILE
        raise UserError(
            f"cannot get the EAT weights: Hugging Face model {hub_id} is neither reachable nor cached ({first}); "
            f"either download model.safetensors and config.json from https://huggingface.co/{hub_id} into a folder "
            f"and pass {OPTION} /that/folder, or download {FAIRSEQ_FILE} from {FAIRSEQ_URL} and put it at "
            f"{placed} or pass {OPTION} /path/to/{FAIRSEQ_FILE}") from None


def _read(source: Path) -> tuple[dict, Path]:
    """The tensors of a weights folder or file (either layout) and the file they came from."""
    if source.is_dir():
        path = source / "model.safetensors"
        if not path.is_file():
            raise UserError(f"{source}: no model.safetensors in this folder; {GET}")
        _check_port_config(source / "config.json")
        return _read_safetensors(path), path
    if source.suffix == ".safetensors":
        _check_port_config(source.with_name("config.json"))
        return _read_safetensors(source), source
    checkpoint = weight_files.read_checkpoint(source, GET)
    if isinstance(checkpoint, dict) and isinstance(checkpoint.get("model"), dict):
        return checkpoint["model"], source  # fairseq: {"model": state, "cfg": ..., ...}
    if isinstance(checkpoint, dict):
        return checkpoint, source
    raise UserError(f"{source}: not the EAT-base checkpoint (holds a {type(checkpoint).__name__}); {GET}")


def _read_safetensors(path: Path) -> dict:

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError) as err:
        raise UserError(f"{path}: cannot be read as safetensors ({str(err).strip()[:200]}); {GET}") from None


def _check_port_config(path: Path) -> None:
    """A port's config.json, when present, must describe EAT-base (not EAT-large or another model)."""
    if not path.is_file():
        return
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as err:  # RecursionError: nested hundreds of levels deep
        raise UserError(f"{path}: cannot be read as JSON ({err}); {GET}") from None
    expected = {"model_type": "eat", "embed_dim": DIM, "depth": DEPTH, "num_heads": HEADS, "patch_size": PATCH,
                "stride": PATCH, "in_chans": 1, "mel_bins": MEL_BINS, "max_length": PUBLISHED_TIME_PATCHES,
                "mlp_ratio": MLP / DIM, "qkv_bias": True, "layer_norm_first": False, "norm_eps": NORM_EPS,
                "norm_affine": True, "fixed_positions": True}
    for name, value in expected.items():
        if isinstance(config, dict) and name in config and config[name] != value:
            raise UserError(f"{path}: not EAT-base ({name} is {config[name]!r}, EAT-base has {value!r}); {GET}")


def _to_our_names(state: dict, model: EAT, path: Path) -> dict:
    """Map a published state dict onto ``model``'s names; every key must match (the listed unused ones aside)."""
    if _CLS[0] in state:
        layout, unused, block_prefix = 0, _UNUSED_PORT_KEYS, "model.blocks"
    elif _CLS[1] in state:
        layout, unused, block_prefix = 1, _UNUSED_FAIRSEQ_KEYS, "blocks"
    else:
        raise UserError(f"{path}: not the EAT-base checkpoint (neither the Hugging Face port's nor the original's "
                        f"key names: no {_CLS[0]} or {_CLS[1]}); {GET}")
    names = {_CLS[layout]: "cls_token", _POSITIONS[layout]: "positions"}
    for ours, published in _TOP_NAMES.items():
        for kind in ("weight", "bias"):
            names[f"{published[layout]}.{kind}"] = f"{ours}.{kind}"
    for index in range(DEPTH):
        for ours, published in _BLOCK_NAMES.items():
            for kind in ("weight", "bias"):
                names[f"{block_prefix}.{index}.{published}.{kind}"] = f"blocks.{index}.{ours}.{kind}"

    def refuse(reason: str) -> UserError:
        return UserError(f"{path}: not the EAT-base checkpoint ({reason}); {GET}")

    unexpected = sorted(key for key in state if key not in names and key not in unused)
    missing = sorted(key for key in names if key not in state)
    if unexpected or missing:
        parts = [f"{len(keys)} {what} keys, e.g. {keys[0]}" for what, keys in (("unexpected", unexpected),
                                                                               ("missing", missing)) if keys]
        raise refuse("; ".join(parts))
    ours = model.state_dict()
    mapped = {}
    for published, name in names.items():
        tensor = state[published]
        if not isinstance(tensor, torch.Tensor):
            raise refuse(f"{published} is a {type(tensor).__name__}, not a tensor")
        if name == "positions":
            tensor = _checked_positions(tensor, refuse)
        if tensor.shape != ours[name].shape:
            raise refuse(f"{published} has shape {tuple(tensor.shape)}, EAT-base {tuple(ours[name].shape)}")
        mapped[name] = tensor
    return mapped


def _checked_positions(table: torch.Tensor, refuse) -> torch.Tensor:
    """The published (1, 6144, 768) position table must be the sin-cos formula; its first 64 x 8 rows are used."""
    expected = sincos_positions(PUBLISHED_TIME_PATCHES, FREQUENCY_PATCHES).unsqueeze(0)
    if table.shape != expected.shape:
        raise refuse(f"position table of shape {tuple(table.shape)}, EAT-base {tuple(expected.shape)}")
    difference = (table.float() - expected).abs().max().item()
    if not difference <= POSITION_TOLERANCE:
        raise refuse(f"position table is not EAT's fixed sin-cos table (differs by up to {difference:.3g})")
    return table[:, : TIME_PATCHES * FREQUENCY_PATCHES]
