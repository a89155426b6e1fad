"""How long reproducing the baseline's dev-test numbers takes here: PaSST + roberta-large embedding throughput.

Builds the baseline's architecture (PaSST ``passt_s_p16_s16_128_ap468`` and roberta-large's sizes: 24 layers, 1024
hidden, 16 heads; random weights, the hub cannot be reached here, the compute is the same) and embeds, in eval
mode, clips of Clotho's length mix (15-30 s, uniform: two or three 10 s segments) and captions of Clotho's length
(8-20 words) the way ``embed`` does (batches; only the segments a clip uses; captions padded to the batch's
longest). The reference is the baseline's ``predict.py`` way with the same model: one clip at a time, padded to
30 s so all three segments are computed, one caption at a time.

Printed: clips/s and captions/s of both ways, their ratio, and the projected time to embed Clotho's dev-test
(1,045 clips and its 5,225 captions, which give both the single-relevant scores and, for the 1,037 queries of the
relevance file, mAP@16) on this machine. ``--write-docs`` puts them into this script's block of docs/speed.md.

    .venv/bin/python benchmarks/bench_reproduce.py [--clips 6] [--captions 64] [--threads N] [--write-docs]

About 2-4 minutes on a 2-core CPU with the defaults.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import _published

CLIPS, CAPTIONS = 1045, 5225  # Clotho evaluation = DCASE dev-test
WORDS = ("a dog barks in the distance while rain falls on a metal roof and people talk in a busy hall birds chirp "
         "water flows wind blows through the trees a car passes by quickly footsteps on gravel door creaks").split()


def timed(function) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def main() -> None:
    from dcase_t6.embedding.encode import Clips, EncodeSettings, embed_audio, embed_text, pad_batch
    from dcase_t6.models import DualEncoder, ModelConfig
    from dcase_t6.models.text import ROBERTA_LARGE_SIZES, quiet_transformers, save_random_roberta

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=6, help="Clips embedded each way.")
    parser.add_argument("--captions", type=int, default=64, help="Captions embedded each way.")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's).")
    _published.add_option(parser)
    arguments = parser.parse_args()
    if arguments.threads:
        torch.set_num_threads(arguments.threads)
    rng = np.random.default_rng(0)
    clips = [rng.normal(0, 0.1, int(rng.uniform(15, 30) * 32000)).astype(np.float32) for _ in range(arguments.clips)]
    captions = [" ".join(rng.choice(WORDS, int(rng.integers(8, 21)))) for _ in range(arguments.captions)]
    with tempfile.TemporaryDirectory() as folder, quiet_transformers():
        text = save_random_roberta(Path(folder), [" ".join(WORDS)] * 4, **ROBERTA_LARGE_SIZES)
        torch.manual_seed(0)
        model = DualEncoder(ModelConfig(backbone="passt", text_model=str(text)), audio_weights="random",
                            text_pretrained=False).eval()
    device = torch.device("cpu")
    paths = list(range(len(clips)))
    read = lambda index, most: clips[index][:most]  # noqa: E731
    embed_audio(model, Clips(paths[:1], read, 30 * 32000), EncodeSettings(1, device))  # first-call allocations
    batched_audio = timed(lambda: embed_audio(model, Clips(paths, read, 30 * 32000), EncodeSettings(4, device)))

    def one_at_a_time_padded():
        with torch.no_grad():
            for clip in clips:
                padded = np.zeros(30 * 32000, np.float32)
                padded[: len(clip)] = clip
                waveforms, lengths = pad_batch([padded])
                model.encode_audio(waveforms, lengths)

    single_audio = timed(one_at_a_time_padded)
    embed_text(model, captions[:2], EncodeSettings(2, device))
    batched_text = timed(lambda: embed_text(model, captions, EncodeSettings(32, device)))
    single_text = timed(lambda: [embed_text(model, [caption], EncodeSettings(1, device)) for caption in captions])
    clips_per_s, single_clips_per_s = len(clips) / batched_audio, len(clips) / single_audio
    captions_per_s, single_captions_per_s = len(captions) / batched_text, len(captions) / single_text
    print(f"torch threads: {torch.get_num_threads()}; {len(clips)} clips of 15-30 s, {len(captions)} captions")
    print(f"audio (PaSST):          embed {clips_per_s:6.2f} clips/s    predict.py way {single_clips_per_s:6.2f} "
          f"clips/s    ratio {clips_per_s / single_clips_per_s:.2f}x")
    print(f"text (roberta-large):   embed {captions_per_s:6.2f} captions/s predict.py way "
          f"{single_captions_per_s:6.2f} captions/s ratio {captions_per_s / single_captions_per_s:.2f}x")
    total = CLIPS / clips_per_s + CAPTIONS / captions_per_s
    single = CLIPS / single_clips_per_s + CAPTIONS / single_captions_per_s
    print(f"Clotho dev-test ({CLIPS:,} clips, {CAPTIONS:,} captions) on this machine: {total / 60:.0f} min with "
          f"embed ({CLIPS / clips_per_s / 60:.0f} min audio + {CAPTIONS / captions_per_s / 60:.0f} min text); "
          f"{single / 60:.0f} min the predict.py way")
    rows = [_published.Row("PaSST embedding, Clotho's 15-30 s clips: `embed` (batches of 4) vs `predict.py`'s way "
                           "(one at a time, padded to 30 s)",
                           f"{clips_per_s:.2f} clips/s; {clips_per_s / single_clips_per_s:.2f}x predict.py's way"),
            _published.Row("roberta-large embedding, captions of 8-20 words: `embed` (batches of 32) vs one at a time",
                           f"{captions_per_s:.1f} captions/s; {captions_per_s / single_captions_per_s:.1f}x "
                           "predict.py's way"),
            _published.Row(f"Clotho dev-test ({CLIPS:,} clips, {CAPTIONS:,} captions) embedded on this machine "
                           "(PaSST + roberta-large)",
                           f"{total / 60:.0f} min ({CLIPS / clips_per_s / 60:.0f} min audio + "
                           f"{CAPTIONS / captions_per_s / 60:.0f} min text); {single / 60:.0f} min the predict.py way")]
    _published.finish(__file__, rows, arguments.write_docs, f"{torch.get_num_threads()} torch threads")


if __name__ == "__main__":
    main()
