"""``passt``: PaSST (hear21passt ``passt_s_p16_s16_128_ap468``) exactly as the DCASE 2025 baseline uses it.

Input 32 kHz mono, padded/cropped to 30 s and cut into three 10 s segments; a clip of at most 10 s
uses the first segment, at most 20 s the mean of the first two, else the mean of all three. Each
segment: mel front end (128 mels, window 800, hop 320, n_fft 1024, fmax 15 kHz, pre-emphasis,
log(mel + 1e-5), (x + 4.5) / 5; random fmin/fmax shifts only in training, no gradient), then the
transformer; its 768-d output is the mean of the CLS and distillation tokens. Training drops
``patchout_t`` random time columns and ``patchout_f`` random frequency rows of the 8 x 62 patch grid
of a segment (structured patchout; the baseline's 15 and 2 leave 6 x 47 = 282 of 496 patches);
evaluation uses every patch. The AudioSet classifier heads of the checkpoint are loaded with it and
then removed: their outputs never reach the loss, and DDP requires every trained parameter to.

``model.pooling`` (``pooling.py``): ``default`` is the mean of the CLS and distillation tokens above; ``mean`` and
``attention`` pool the patch tokens, without those of time columns that start after a segment's true end (PaSST
itself attends to them, as the baseline does). The segments' vectors are averaged per clip after pooling. The
transformer is run here as hear21passt's ``forward_features`` runs it (same operations, same random draws for
patchout), so that the token sequence is available and its blocks can be checkpointed (``recompute.py``).
"""

from __future__ import annotations

import contextlib
import io
import warnings

import torch
from torch import nn

from dcase_t6.common.errors import UserError
from dcase_t6.models import weights as weight_files
from dcase_t6.models.audio import register, segments
from dcase_t6.models.audio.pooling import TokenPool, time_padding
from dcase_t6.models.audio.recompute import run_blocks
from dcase_t6.models.depth import EncoderLayers

ARCH = "passt_s_p16_s16_128_ap468"
WEIGHTS_URL = "https://github.com/kkoutini/PaSST/releases/download/v0.0.2-audioset/passt-s-f128-p16-s16-ap.468.pt"
SAMPLE_RATE = 32000
SEGMENT_SAMPLES = 10 * SAMPLE_RATE
SEGMENTS = 3
INPUT_FRAMES = 1000  # mel frames of a 10 s segment (hop 320): the baseline's input_tdim
FREQUENCY_PATCHES, TIME_PATCHES = 8, 62  # the 16 x 16 patch grid of a segment
COLUMN_SAMPLES = 16 * 320  # samples per time column of patches (16 mel frames, hop 320)
# hear21passt's own deprecation and size notices on every call; nothing a user can act on.
for _notice in (r"Input image size", r"`torch.cuda.amp.autocast", r"stft with return_complex=False"):
    warnings.filterwarnings("ignore", message=_notice)


@register("passt")
class PaSST(nn.Module):
    """PaSST audio backbone; ``weights``: a local file, ``"download"`` (release URL, cached) or ``"random"``."""

    sample_rate = SAMPLE_RATE
    output_dim = 768
    gradient_checkpointing = False  # recompute.enable sets it

    def __init__(self, weights: str | None = "download", patchout_t: int = 15, patchout_f: int = 2,
                 pooling: str = "default", **_ignored):
        super().__init__()
        if not (0 <= patchout_t < TIME_PATCHES and 0 <= patchout_f < FREQUENCY_PATCHES):
            raise UserError(f"PaSST structured patchout ({patchout_t}, {patchout_f}) must leave patches: "
                            f"model.patchout_t below {TIME_PATCHES}, model.patchout_f below {FREQUENCY_PATCHES}")
        hear21passt_passt, preprocess = _import_hear21passt()
        self.mel = preprocess.AugmentMelSTFT(
            n_mels=128, sr=SAMPLE_RATE, win_length=800, hopsize=320, n_fft=1024, freqm=0, timem=0, htk=False,
            fmin=0.0, fmax=15000, norm=1, fmin_aug_range=10, fmax_aug_range=2000)
        with contextlib.redirect_stdout(io.StringIO()):  # hear21passt prints banners and shapes
            self.net = hear21passt_passt.get_model(arch=ARCH, pretrained=False, fstride=16, tstride=16,
                                                   input_tdim=INPUT_FRAMES, s_patchout_t=patchout_t,
                                                   s_patchout_f=patchout_f)
        hear21passt_passt.first_RUN = False
        self.weights_source = _load_weights(self.net, hear21passt_passt, weights or "download")
        self.net.head, self.net.head_dist = nn.Identity(), nn.Identity()
        self.pool = TokenPool(pooling, self.output_dim, "passt")

    def forward(self, waveforms: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        cut, owners, counts = segment_clips(waveforms, lengths)
        with torch.no_grad(), torch.autocast(cut.device.type, enabled=False):  # the front end in fp32
            mel = self.mel(cut.float())
        tokens, columns, rows = self.tokens(mel.unsqueeze(1))
        if self.pool.kind == "default":
            features = (tokens[:, 0] + tokens[:, 1]) / 2
        else:
            true = segments.segment_lengths(lengths, SEGMENT_SAMPLES, SEGMENTS)
            valid = torch.clamp(torch.div(true + COLUMN_SAMPLES - 1, COLUMN_SAMPLES, rounding_mode="floor"), min=1)
            features = self.pool(tokens[:, 2:], time_padding(valid, columns, rows, time_major=False))
        return segments.mean_of_segments(features, owners, counts)

    def tokens(self, spectrograms: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
        """hear21passt's ``forward_features`` (structured patchout in training), keeping every token.

        Args:
            spectrograms: (segments, 1, 128, frames) mel spectrograms.

        Returns:
            The final norm's (segments, 2 + patches, 768) output (CLS, distillation, then the patch tokens
            frequency row by row), the time-column index of each kept column, and the frequency rows kept.
        """
        net = self.net
        x = net.patch_embed(spectrograms)  # (segments, 768, frequency rows, time columns)
        batch, _, frequency, time = x.shape
        time_position = net.time_new_pos_embed
        if time != time_position.shape[-1]:
            time_position = time_position[:, :, :, :time]
        x = x + time_position
        x = x + net.freq_new_pos_embed
        columns = torch.arange(time)
        if net.training and net.s_patchout_t:  # the same draws, in the same order, as forward_features
            columns = torch.randperm(time)[:time - net.s_patchout_t].sort().values
            x = x[:, :, :, columns]
        if net.training and net.s_patchout_f:
            x = x[:, :, torch.randperm(frequency)[:frequency - net.s_patchout_f].sort().values, :]
        x = x.flatten(2).transpose(1, 2)  # hear21passt's unstructured patchout is 0 here (get_model's default)
        cls_token = net.cls_token.expand(batch, -1, -1) + net.new_pos_embed[:, :1, :]
        distillation_token = net.dist_token.expand(batch, -1, -1) + net.new_pos_embed[:, 1:, :]
        x = net.pos_drop(torch.cat((cls_token, distillation_token, x), dim=1))
        x = run_blocks(net.blocks, x, self.gradient_checkpointing)
        return net.norm(x), columns, (x.shape[1] - 2) // len(columns)

    def compile_network(self, **options) -> None:
        """``torch.compile`` each of the 12 transformer blocks in place (regional compilation: the block's code
        is compiled once and reused by every block); the mel front end and the patchout stay eager."""
        for block in self.net.blocks:
            block.compile(**options)

    def encoder_layers(self) -> EncoderLayers:
        """The 12 blocks; below them the patch embedding, the CLS and distillation tokens and the three positional
        tables (the mel front end has no parameters); the final norm is above them."""
        net = self.net
        return EncoderLayers.of([net.patch_embed, net.cls_token, net.dist_token, net.new_pos_embed,
                                 net.freq_new_pos_embed, net.time_new_pos_embed], net.blocks)


def segment_clips(waveforms: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """PaSST's segments of a batch (three 10 s segments at 32 kHz; see ``segments.segment_clips``)."""
    return segments.segment_clips(waveforms, lengths, SEGMENT_SAMPLES, SEGMENTS)


def _import_hear21passt():
    try:
        from hear21passt.models import passt, preprocess
    except ImportError as err:
        raise UserError(f"the passt backbone needs the hear21passt package ({err}); "
                        "install it with `pip install hear21passt timm torchaudio`") from None
    return passt, preprocess


def _load_weights(net: nn.Module, hear21passt_passt, weights: str) -> str:
    """Load the AudioSet-pretrained weights into ``net``; returns where they came from."""
    if weights == "random":
        return "random initialisation (no pretrained weights)"
    option = "--audio-weights"
    path = weight_files.fetch(WEIGHTS_URL, "PaSST", option) if weights == "download" else \
        weight_files.local_file(weights, "PaSST", option)
    state = torch.load(path, map_location="cpu", weights_only=True)
    try:
        net.load_state_dict(hear21passt_passt.checkpoint_filter_fn(state, net), strict=True)
    except (RuntimeError, KeyError, AttributeError) as err:
        first = str(err).splitlines()[0]
        raise UserError(f"{path}: not the {ARCH} checkpoint ({first}); download {WEIGHTS_URL}") from None
    return str(path)
