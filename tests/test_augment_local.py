"""`dcase-t6 augment back-translate` with local MarianMT models: tiny random models saved to folders as the
hub's Helsinki-NLP/opus-mt-* are (SentencePiece tokenizers trained here). Their output is noise; the pipeline
is the real one: folders loaded through transformers, batched generation, quality checks, journal, cap and
resume, the CSV that training reads."""

import json
import random
import shutil

import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from dcase_t6.captions.source import CaptionSource, read_captions
from dcase_t6.cli import main
from dcase_t6.runs.config import build_config
from dcase_t6.training.augmentation import read_extra_captions

WORDS = ("a the dog cat bird loud quiet high low beep hiss chirp siren bell knock hum rumble click then and with "
         "after sound noise water rain wind car engine people talk far near soft").split()


def save_tiny_marian(folder, seed: int = 0):
    """A randomly initialised MarianMTModel + MarianTokenizer (word-level SentencePiece on ASCII words), saved
    with save_pretrained; generation makes 6-12 new tokens."""
    import sentencepiece
    from transformers import MarianConfig, MarianMTModel, MarianTokenizer

    folder.mkdir(parents=True)
    rng = random.Random(seed)
    corpus = folder / "corpus.txt"
    corpus.write_text("\n".join(" ".join(rng.choice(WORDS) for _ in range(8)) for _ in range(200)))
    sentencepiece.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(folder / "spm"), vocab_size=34,
                                             model_type="word", bos_id=-1, eos_id=-1, pad_id=-1, unk_id=0,
                                             minloglevel=2)
    processor = sentencepiece.SentencePieceProcessor(model_file=str(folder / "spm.model"))
    vocab = {"</s>": 0, "<unk>": 1, "<pad>": 2}
    for piece in (processor.id_to_piece(i) for i in range(processor.get_piece_size())):
        vocab.setdefault(piece, len(vocab))
    (folder / "vocab.json").write_text(json.dumps(vocab))
    tokenizer = MarianTokenizer(source_spm=str(folder / "spm.model"), target_spm=str(folder / "spm.model"),
                                vocab=str(folder / "vocab.json"))
    config = MarianConfig(vocab_size=len(vocab), d_model=16, encoder_layers=1, decoder_layers=1,
                          encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32,
                          max_position_embeddings=64, pad_token_id=2, eos_token_id=0, decoder_start_token_id=2,
                          forced_eos_token_id=0)
    torch.manual_seed(seed)
    model = MarianMTModel(config)
    model.generation_config.min_new_tokens = 6
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    for name in ("corpus.txt", "spm.vocab"):
        (folder / name).unlink()
    return folder


@pytest.fixture(scope="module")
def marian_models(tmp_path_factory):
    """opus-mt-en-de, -de-en, -en-fr, -fr-en folders (two random models, each direction pair distinct)."""
    root = tmp_path_factory.mktemp("marian")
    first, second = save_tiny_marian(root / "opus-mt-en-de", 0), save_tiny_marian(root / "opus-mt-de-en", 1)
    shutil.copytree(first, root / "opus-mt-en-fr")
    shutil.copytree(second, root / "opus-mt-fr-en")
    return root


def run(tiny_data_root, out, models, *extra):
    arguments = ["augment", "back-translate", "--data-root", str(tiny_data_root), "--dataset", "synthetic", "--out",
                 str(out), "--local-models", f"{models}/opus-mt-{{src}}-{{tgt}}", "--languages", "de,fr",
                 "--max-new-tokens", "12", "--beams", "2", "--batch-size", "16", "--json", *extra]
    result = CliRunner().invoke(main, arguments)
    return result, json.loads(result.stdout) if result.exit_code == 0 else None


def translate(folder, texts):
    from transformers import MarianMTModel, MarianTokenizer

    tokenizer, model = MarianTokenizer.from_pretrained(folder), MarianMTModel.from_pretrained(folder).eval()
    with torch.inference_mode():
        tokens = tokenizer(texts, return_tensors="pt", padding=True)
        output = model.generate(**tokens, num_beams=2, max_new_tokens=12)
    return tokenizer.batch_decode(output, skip_special_tokens=True)


def test_local_models_back_translate_with_a_cap_then_resume(tiny_data_root, tmp_path, marian_models):
    captions = read_captions(CaptionSource(str(tiny_data_root), "synthetic"))
    out = tmp_path / "bt.csv"
    result, dry = run(tiny_data_root, out, marian_models, "--dry-run")
    assert result.exit_code == 0, result.output
    assert dry["estimate"]["requests"] == 2 * len(captions) and dry["estimate"]["prompt_tokens"] == 0
    assert not out.with_suffix(".journal.jsonl").exists()

    result, capped = run(tiny_data_root, out, marian_models, "--max-requests", "25")
    assert result.exit_code == 0, result.output
    assert capped["stopped"] == "max-requests" and capped["requests"] == 25
    journal = out.with_suffix(".journal.jsonl")
    assert len(journal.read_text().splitlines()) == 1 + 25

    result, done = run(tiny_data_root, out, marian_models)
    assert result.exit_code == 0, result.output
    assert done["requests"] == 2 * len(captions) - 25 and done["stopped"] is None
    assert done["kept"] + sum(done["rejected"].values()) == len(captions) and done["kept"] > 0
    result, again = run(tiny_data_root, out, marian_models)
    assert again["requests"] == 0 and again["kept"] == done["kept"]

    rows = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert list(rows.columns) == ["file_name", "caption", "dataset", "pivot"] and len(rows) == done["kept"]
    # the real models' output, through transformers directly: English -> pivot -> English
    first = next(i for i, caption in enumerate(captions) if caption.file_name == rows["file_name"][0])
    pivot = rows["pivot"][0]
    middle = translate(marian_models / f"opus-mt-en-{pivot}", [captions[first].caption])
    assert rows["caption"][0] == " ".join(translate(marian_models / f"opus-mt-{pivot}-en", middle)[0].split())
    meta = json.loads(out.with_suffix(".meta.json").read_text())
    assert meta["generator"]["backend"] == "local"
    assert meta["generator"]["models_used"]["de"] == [str(marian_models / "opus-mt-en-de"),
                                                      str(marian_models / "opus-mt-de-en")]
    assert "MarianMT" in meta["text_augmentation"] and meta["counts"]["kept"] == done["kept"]
    config = build_config(None, {"data_root": str(tiny_data_root), "datasets": "synthetic",
                                 "caption_augmentation.extra_captions_p": 0.5,
                                 "caption_augmentation.extra_captions_file": str(out)})
    clip_index = {f"synthetic/{name}": i for i, name in enumerate(dict.fromkeys(c.file_name for c in captions))}
    assert sum(map(len, read_extra_captions(str(out), clip_index, config).values())) == done["kept"]


def test_a_missing_local_model_names_the_fix(tiny_data_root, tmp_path, marian_models):
    result, _ = run(tiny_data_root, tmp_path / "bt.csv", marian_models, "--languages", "de,xx")
    assert result.exit_code == 2 and "cannot load translation model" in result.stderr
    assert "opus-mt-en-xx" in result.stderr and "--local-models" in result.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_cuda_without_a_gpu_is_refused(tiny_data_root, tmp_path, marian_models):
    result, _ = run(tiny_data_root, tmp_path / "bt.csv", marian_models, "--device", "cuda")
    assert result.exit_code == 2 and "no CUDA GPU is available here" in result.stderr


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_auto_device_translates_on_the_gpu(tiny_data_root, tmp_path, marian_models):
    out = tmp_path / "bt.csv"
    result, report = run(tiny_data_root, out, marian_models, "--max-requests", "10")
    assert result.exit_code == 0 and report["requests"] == 10
    assert json.loads(out.with_suffix(".meta.json").read_text())["generator"]["device"] == "cuda"
