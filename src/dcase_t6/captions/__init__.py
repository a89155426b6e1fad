"""Caption generation for training-time augmentation (``dcase-t6 augment``): back-translations and LLM-merged
captions of clip pairs, written as the CSV files ``caption_augmentation.extra_captions_file`` and
``audio_mix.merged_captions_file`` read.

Modules: ``source`` (captions of a prepared split, cluster labels), ``prompts`` (templates), ``quality`` (what
answer is usable), ``endpoint`` (OpenAI-compatible chat completions), ``journal`` (append-only answers, resume),
``engine`` (requests in threads, spend limits, progress, outputs), ``backtranslation`` (local MarianMT or the
endpoint), ``mixing`` (LLM mix).
"""
