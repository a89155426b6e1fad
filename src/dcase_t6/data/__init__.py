"""Data preparation: download, verify, extract, index and cache the audio-text datasets.

Data root layout (``--root DATA``; every file is written atomically, temporary names start with ``.``)::

    DATA/
      clotho/                       Clotho v2.1 (``prepare clotho``)
        archives/                   the nine Zenodo files (downloads; ``*.part`` while incomplete)
        clotho_captions_<part>.csv  file_name, caption_1..caption_5         (part: development,
        clotho_metadata_<part>.csv  file_name, keywords, sound_id, ...       validation, evaluation)
        audio/<part>/*.wav          extracted clips (audio/.<part>.extracted: MD5 of the archive used)
        verified.json               files whose MD5 matched, by size and mtime (no re-hashing on re-runs)
      synthetic/                    the demo dataset in the same layout (``prepare synthetic``)
        events.csv                  what was placed in each clip (kind, variant, loudness, onset)
        synthetic-devtest-relevance-metadata_eval.csv   organiser-format multi-relevance file
      index/<dataset>.csv           split index: one row per (clip, caption), see INDEX_COLUMNS
      index/<dataset>.report.json   counts per split, skipped files and why, excluded items per source
      index/eval.queries.csv        evaluation-set queries (``prepare eval``), column ``caption``
      relevance/<dataset>/development-testing.csv   validated multi-relevance file (``prepare relevance``)
      cache/<rate>/audio-<k>.f32    decoded mono float32 samples at <rate> Hz, clips back to back
                                    (one data file per decoding worker)
      cache/<rate>/index.csv        path, source size/mtime/crc32, shard, offset, length (``prepare cache``)
      cache/<rate>/skipped.csv      files the last cache run could not decode, and why

Clotho parts map to the DCASE split names: development -> development-training, validation ->
development-validation, evaluation -> development-testing. Paths in the index are relative to DATA
when the audio lies inside it, absolute otherwise (AudioCaps, WavCaps and the evaluation set stay
where the user keeps them).
"""
