"""The `explore` test case: six real WAVs with awkward names, two matrices over four queries (the second with its
columns shuffled), relevance and clip captions. The ``case`` fixture (conftest) builds it in ``tmp_path``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf

from dcase_t6.retrieval.matrices import SimilarityMatrix, write_matrix

FILES = ["a.wav", "b, c.wav", "d&#39;e.wav", "Café 1.wav", "g.wav", "h.wav"]
QUERIES = ["<script>alert(1)</script> a bell", "rain, then wind", "a dog barks", "an engine hums"]
# q0: relevant a.wav, d'e.wav; q1: b, c.wav; q2: g.wav, h.wav, a.wav; q3: Café 1.wav
RELEVANT = [["a.wav", "d&#39;e.wav"], ["b, c.wav"], ["g.wav", "h.wav", "a.wav"], ["Café 1.wav"]]
SCORES = np.array([
    [0.9, 0.8, 0.7, 0.95, 0.1, 0.5],  # order: Café, a, b, d'e, h, g -> relevant at ranks 2 and 4
    [0.2, 0.1, 0.3, 0.9, 0.0, 0.4],   # b, c.wav last but one: rank 5
    [0.5, 0.5, 0.5, 0.5, 0.5, 0.5],   # all tied: irrelevant first -> relevant at 4, 5, 6
    [0.1, 0.2, 0.3, 0.4, 0.6, 0.5],   # Café 1.wav at rank 3
])


def write_relevance(path, queries, relevant):
    pd.DataFrame({"query": queries, "audio_filenames": [repr(files) for files in relevant]}).to_csv(path, index=False)
    return path


def explore_case(tmp_path: Path) -> dict:
    """Audio folder with real WAVs, two matrices (the second with shuffled columns), relevance and captions."""
    audio = tmp_path / "audio"
    audio.mkdir()
    rng = np.random.default_rng(0)
    for index, name in enumerate(FILES):
        sf.write(audio / name, rng.uniform(-0.5, 0.5, 4410 + 100 * index).astype(np.float32), 44100,
                 subtype="PCM_16")
    (tmp_path / "secret.wav").write_bytes(b"not yours")
    first = tmp_path / "first.csv"
    write_matrix(SimilarityMatrix(QUERIES, FILES, SCORES), first)
    order = [5, 3, 0, 1, 4, 2]
    second_scores = SCORES + np.linspace(-0.3, 0.3, SCORES.size).reshape(SCORES.shape)
    second = tmp_path / "second.npz"
    write_matrix(SimilarityMatrix(QUERIES, [FILES[i] for i in order], second_scores[:, order]), second)
    relevance = write_relevance(tmp_path / "relevance.csv", QUERIES, RELEVANT)
    captions = tmp_path / "captions.csv"
    pd.DataFrame({"file_name": FILES, **{f"caption_{k}": [f"{name} caption {k}" for name in FILES]
                                         for k in range(1, 6)}}).to_csv(captions, index=False)
    return {"audio": audio, "first": first, "second": second, "relevance": relevance, "captions": captions,
            "second_scores": second_scores, "tmp": tmp_path}
