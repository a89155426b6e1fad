"""Share and track: exported models others can load, runs compared at a glance.

* ``history``: a run's per-epoch record as curves, its best epoch, its dev-test scores (from the registered
  similarity matrix, or those it was exported with), the curves as a PNG;
* ``compare``: several runs side by side, the config keys that differ and the metrics (``runs compare``);
* ``folder``: the exported model folder (safetensors weights, config, text tokenizer), written and loaded
  strictly (``load_exported``: a folder or a Hugging Face hub id);
* ``card``: the folder's model card (``README.md``);
* ``export``: a registered run -> a model folder (``dcase-t6 export``), optionally pushed to the hub;
* ``importing``: a model folder or hub id -> a registered run (``runs import``), usable as a distillation
  teacher, an ensemble member or with ``embed``;
* ``hub``: upload and download with ``huggingface_hub``, failures as one line.
"""
