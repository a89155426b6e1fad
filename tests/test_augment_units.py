"""The parts of `dcase-t6 augment`: answer quality, prompt templates, the journal (torn lines, damage, lock,
other settings), pivot languages and pair draws (seeded, stable as the plan grows, cluster exclusion)."""

import json
import re
from collections import Counter

import pandas as pd
import pytest

from dcase_t6.captions.backtranslation import BackTranslationSettings, pivot_language
from dcase_t6.captions.engine import OutputFiles, estimate_tokens
from dcase_t6.captions.journal import FAILED, KEPT, REJECTED, Entry, Journal, request_key
from dcase_t6.captions.mixing import MixSettings, sample_pairs
from dcase_t6.captions.prompts import DEFAULT_TEXTS, load_template, parse_languages
from dcase_t6.captions.quality import check_caption, check_translation, clean
from dcase_t6.captions.source import CaptionSource, SourceCaption, read_captions, read_cluster_labels
from dcase_t6.common.errors import UserError

SOURCE = "A dog barks loudly while cars pass by on a wet street."


@pytest.mark.parametrize("answer, reason", [
    ("Cars drive along a wet street as a dog keeps barking.", None),
    ('"Caption: A dog barks as cars go by on the wet road."', None),
    ("Merged caption: A dog\u2019s loud bark \u2014 and passing cars.", None),
    (None, "empty"),
    ("   ", "empty"),
    ("I'm sorry, but I cannot help with that request.", "refusal"),
    ("As an AI language model, I think a dog barks.", "refusal"),
    ("a dog barks loudly, while cars pass by on a wet street", "identical to the source"),
    ("A dog barks.", "outside 5-30 words"),
    (" ".join(["noise"] * 31), "outside 5-30 words"),
    ("Ein Hund bellt laut, w\u00e4hrend Autos vorbeifahren.", "non-ASCII characters"),
    ("A dog barks \x07 while cars pass by slowly.", "non-ASCII characters"),
    ("Here is the caption:\nA dog barks as cars pass by.", "several lines"),
])
def test_caption_checks(answer, reason):
    verdict = check_caption(answer, [SOURCE, "Rain falls on a roof."])
    assert verdict.reason == reason, verdict


def test_cleaning_and_translation_checks():
    assert clean("  ``A  dog\u00a0barks``  ") == "A dog barks"
    assert check_translation("Ein Hund bellt laut.", SOURCE).kept  # any script is fine in the pivot step
    assert check_translation("\u72d7\u5728\u53eb", SOURCE).kept
    assert check_translation(SOURCE.upper(), SOURCE).reason == "identical to the source"
    assert check_translation("", SOURCE).reason == "empty"


def test_templates_defaults_files_and_their_errors(tmp_path):
    assert load_template("mix").text == DEFAULT_TEXTS["mix"] and load_template("mix").origin == "default"
    path = tmp_path / "forward.txt"
    path.write_text("Into {language} ({code}), keep {{braces}}: {caption}\n")
    template = load_template("forward", path)
    assert template.fill(caption="a bell", language="German", code="de") == "Into German (de), keep {braces}: a bell"
    assert template.origin == str(path)
    for text, message in (("{caption} {colour}", "unknown field {colour}"), ("no field here", "never uses {caption}"),
                          ("{caption", "not a valid template")):
        path.write_text(text)
        with pytest.raises(UserError, match=message):
            load_template("forward", path)
    with pytest.raises(UserError, match="prompt template not found"):
        load_template("mix", tmp_path / "absent.txt")
    assert parse_languages("de, fr,zh") == ("de", "fr", "zh")
    for bad in ("", "de,en", "de,de", "d"):
        with pytest.raises(UserError, match="--languages"):
            parse_languages(bad)


def test_output_files_sit_beside_the_csv(tmp_path):
    files = OutputFiles.beside(tmp_path / "bt.csv")
    assert (files.journal.name, files.metadata.name) == ("bt.journal.jsonl", "bt.meta.json")
    assert OutputFiles.beside(tmp_path / "bt.csv", tmp_path / "j.jsonl").journal == tmp_path / "j.jsonl"
    with pytest.raises(UserError, match="name it NAME.csv"):
        OutputFiles.beside(tmp_path / "bt.tsv")
    assert estimate_tokens("") == 1 and estimate_tokens("x" * 41) == 11


def test_journal_resumes_cuts_a_torn_line_and_refuses_damage_other_settings_and_a_second_writer(tmp_path):
    path = tmp_path / "j.jsonl"
    generator = {"backend": "api", "model": "m", "prompts": {"mix": "{caption_1} {caption_2}"}}
    with Journal(path, "llm-mix", generator) as journal:
        journal.append(Entry("a", "mix", KEPT, "a caption"))
        journal.append(Entry("b", "mix", FAILED, reason="no answer", detail="HTTP 500"))
        journal.extend([Entry("c", "mix", REJECTED, "x", "empty"), Entry("b", "mix", KEPT, "late answer")])
        with pytest.raises(UserError, match="another dcase-t6 augment process is writing"):
            Journal(path, "llm-mix", generator)
    with open(path, "ab") as handle:
        handle.write(b'{"key": "d", "step": "mi')
    reader = Journal(path, "llm-mix", generator, write=False)  # a dry run reads and changes nothing
    assert set(reader.entries) == {"a", "b", "c"} and path.read_bytes().endswith(b'"mi')
    with Journal(path, "llm-mix", generator) as journal:
        assert journal.answered("b").text == "late answer" and journal.answered("c").verdict == REJECTED
        assert journal.answered("d") is None
    assert path.read_bytes().endswith(b"}\n")  # the torn line was cut off
    with pytest.raises(UserError, match='written with model = "m", now "n"'):
        Journal(path, "llm-mix", {**generator, "model": "n"})
    with pytest.raises(UserError, match="not a back-translation journal"):
        Journal(path, "back-translation", generator)
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0], "garbage", *lines[1:]]) + "\n")
    with pytest.raises(UserError, match="line 2 is not a journal entry"):
        Journal(path, "llm-mix", generator)
    assert request_key("x", 1, "a") == request_key("x", 1, "a") != request_key("x", 2, "a")


def test_pivot_languages_are_seeded_per_caption_and_spread_over_the_list():
    captions = [SourceCaption("clotho", f"clip_{i}.wav", str(j), f"caption {i} {j}") for i in range(200)
                for j in range(1, 6)]
    settings = BackTranslationSettings(("de", "fr", "es", "zh"), seed=0)
    pivots = [pivot_language(caption, settings) for caption in captions]
    assert pivots == [pivot_language(caption, settings) for caption in reversed(captions)][::-1]
    assert all(180 < count < 320 for count in Counter(pivots).values())
    other = [pivot_language(caption, BackTranslationSettings(settings.languages, seed=1)) for caption in captions]
    assert sum(a != b for a, b in zip(pivots, other)) > 500


def test_pairs_are_seeded_stable_as_the_plan_grows_and_avoid_one_cluster(tiny_data_root, tmp_path):
    captions = read_captions(CaptionSource(str(tiny_data_root), "synthetic"))
    pairs = sample_pairs(captions, MixSettings(20, seed=3))
    assert pairs == sample_pairs(captions, MixSettings(20, seed=3))
    assert pairs[:10] == sample_pairs(captions, MixSettings(10, seed=3))
    assert pairs != sample_pairs(captions, MixSettings(20, seed=4))
    assert len({frozenset((p.first.file_name, p.second.file_name)) for p in pairs}) == 20
    assert all(p.first.file_name != p.second.file_name for p in pairs)
    # two clusters, by the parity of the clip's position: every pair must join an even and an odd clip
    parity = {name: position % 2 for position, name in enumerate(dict.fromkeys(c.file_name for c in captions))}
    labels = pd.DataFrame({"clip": [c.clip for c in captions], "caption": [c.caption for c in captions],
                           "label": [parity[c.file_name] for c in captions]})
    path = tmp_path / "clusters.csv"
    labels.to_csv(path, index=False)
    table = read_cluster_labels(str(path), tmp_path / "no-work", "synthetic")
    apart = sample_pairs(captions, MixSettings(30, seed=3, clusters=table, clusters_origin=str(path)))
    assert all(parity[p.first.file_name] != parity[p.second.file_name] for p in apart)
    with pytest.raises(UserError, match="found no two clips of different clusters"):
        sample_pairs(captions, MixSettings(37, seed=3, clusters=table, clusters_origin=str(path)))
    foreign = {("other/x.wav", "a caption"): 0}
    with pytest.raises(UserError, match="no caption of synthetic has a label there"):
        sample_pairs(captions, MixSettings(3, clusters=foreign, clusters_origin="f.csv"))
    with pytest.raises(UserError, match="neither a file nor a run"):
        read_cluster_labels("some-run", tmp_path / "no-work", "synthetic")


def test_the_journal_is_json_lines_with_the_model_and_prompts_in_its_header(tmp_path):
    path = tmp_path / "j.jsonl"
    with Journal(path, "back-translation", {"backend": "local", "models": "x/{src}-{tgt}"}) as journal:
        journal.append(Entry("k", "forward", KEPT, "Ein Hund", info={"pivot": "de"}))
    header, entry = (json.loads(line) for line in path.read_text().splitlines())
    assert header["kind"] == "back-translation" and header["generator"]["models"] == "x/{src}-{tgt}"
    assert entry["text"] == "Ein Hund" and entry["info"] == {"pivot": "de"}


def test_a_device_the_machine_does_not_have_is_refused_before_any_model_loads():
    import torch

    from dcase_t6.captions.backtranslation import check_device
    from dcase_t6.common.errors import UserError

    check_device("cuda:1", torch.device("cuda:1"), gpus=2)
    check_device("cpu", torch.device("cpu"), gpus=0)
    for name, gpus, words in [("cuda:2", 2, "has 2 GPU(s), cuda:0 to cuda:1"), ("cuda:0", 0, "no CUDA GPU"),
                              ("meta", 1, "not a device for translation models")]:
        with pytest.raises(UserError, match=re.escape(words)):
            check_device(name, torch.device(name), gpus=gpus)
