"""Helpers shared by several test files (fixtures stay in ``tests/conftest.py``); import them as
``from helpers.cli import cli_error``. Each module holds one topic:

- ``cli``: running ``dcase-t6`` in process (``run_dcase``) or as a real process, optionally under torchrun
  (``run_dcase_process``); the one-line refusals (``cli_error``, ``refused``); a free TCP port (``free_port``).
- ``data``: the organisers' files shipped in ``tests/data`` (``DEVTEST_RELEVANCE``) and real files built for a test:
  tones (``write_tone``), a Clotho release of 7z archives (``clotho_release``, ``SMALL``), 7z archives
  (``seven_zip``), digests and snapshots of folders (``md5``, ``tree_digest``, ``snapshot``), and a cache build
  interrupted at its n-th job (``interrupt_at_job``).
- ``explore``: the `explore` test case: matrices, relevance and captions over real WAVs (``explore_case``, with
  ``FILES``, ``QUERIES``, ``RELEVANT``, ``SCORES``, ``write_relevance``).
- ``models``: a small RoBERTa saved as the hub's roberta-large loads (``save_roberta_with_pooler``).
- ``servers``: local HTTP servers on 127.0.0.1 (``LocalServer``), a file server with Range support (``FileServer``,
  ``serving``), a scripted chat-completions API (``ChatServer``, ``KEY``, ``KEY_ENV``, ``good_answer``), and an
  `explore` server run as the user runs it (``start_server``, ``started_json``).
- ``submission``: valid submission systems and metadata (``make_system``, ``label``, ``TEAM``, ``FILES``,
  ``QUERIES``, ``PDF``, ``filled_meta``, ``LABEL``, ``EVALUATE_JSON``, ``write_yaml``) and the text of a PDF
  (``pdf_text_and_images``).
"""
