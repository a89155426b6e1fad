"""`package --init-meta --runs`: every system field from the registered runs, their data and `augment` sidecars;
`--draft-report --runs`: the external resources listed."""

import json
from pathlib import Path

import yaml

from dcase_t6.runs.registry import Registry
from dcase_t6.submission.metadata import meta_problems
from helpers.cli import run_dcase
from helpers.submission import LABEL, make_system, pdf_text_and_images


def _sidecars(folder: Path) -> tuple[Path, Path]:
    """Caption files with the sidecars `augment` writes beside them (OUT.meta.json)."""
    back, mix = folder / "bt.csv", folder / "mix.csv"
    back.write_text("file_name,caption,dataset,pivot\n", encoding="utf-8")
    mix.write_text("file_name_1,file_name_2,caption,dataset\n", encoding="utf-8")
    (folder / "bt.meta.json").write_text(json.dumps({
        "kind": "back-translation", "generator": {"backend": "api", "model": "gpt-4o", "api_base":
                                                  "https://api.openai.com/v1", "prompts": {}},
        "text_augmentation": "back-translation of each clotho training caption through one random pivot language "
                             "(German (de)) with gpt-4o through a chat-completions API"}), encoding="utf-8")
    (folder / "mix.meta.json").write_text(json.dumps({
        "kind": "llm-mix", "generator": {"backend": "api", "model": "gpt-4o", "api_base": "https://api.openai.com/v1"},
        "text_augmentation": "LLM mix: captions of random pairs of clotho training clips merged into one caption of "
                             "the mixture by gpt-4o through a chat-completions API"}), encoding="utf-8")
    return back, mix


def _registered(workdir: Path, data_root: Path, folder: Path) -> list[str]:
    """A pretraining run (synthetic + wavcaps) and two finetuned members distilled from it (PaSST, EAT)."""
    registry = Registry(workdir)
    back, mix = _sidecars(folder)

    def run(name, config, parameters):
        run_id = registry.create_run(name, {"data_root": str(data_root), **config}, None, 0)
        checkpoint = folder / f"{name}.pt"
        checkpoint.write_bytes(b"weights")
        registry.add_file(run_id, "checkpoint", "best", checkpoint, {"parameters": parameters})
        registry.log_epoch(run_id, 1, {"train_loss": 2.0, "mAP@10": 0.3, "mAP@16": 0.35})
        return run_id

    pretrain = run("passt-sid1", {"datasets": ["synthetic", "wavcaps"], "model": {"backbone": "passt"}}, 100)
    finetune = {"datasets": ["synthetic"], "init_from": pretrain, "distill_from": [pretrain], "distill_weight": 1.0,
                "caption_augmentation": {"deletion_p": 0.8, "synonym_p": 0.8, "extra_captions_file": str(back)},
                "audio_mix": {"p": 0.57, "merged_captions_file": str(mix)},
                "clusters": {"method": "bertopic", "source": "e5", "weight": 0.05}, "monitor": "mAP@10"}
    passt = run("passt-sid5", {**finetune, "model": {"backbone": "passt", "text_model": "roberta-large"},
                               "lr": 2e-5}, 1000)
    eat = run("eat-sid5", {**finetune, "model": {"backbone": "eat", "text_model": "roberta-large"}, "lr": 1e-5}, 300)
    return [passt, eat]


def test_init_meta_fills_every_system_field_from_the_runs(tmp_path, tiny_data_root):
    workdir = tmp_path / "work"
    members = _registered(workdir, tiny_data_root, tmp_path)
    weights = tmp_path / "weights.json"
    weights.write_text(json.dumps({"weights": {"passt-sid5": 0.65, "eat-sid5": 0.35}}), encoding="utf-8")
    out = tmp_path / "meta.yaml"
    result = run_dcase("--workdir", workdir, "package", "--init-meta", "--label", LABEL, "--runs", ",".join(members),
                       "--weights", weights, "--out", out)
    assert result.exit_code == 0, result.output
    text = out.read_text(encoding="utf-8")
    assert "# Audio input / sampling rate" in text  # the template's comments are kept
    meta = yaml.safe_load(text)
    system = meta["system"]
    description = system["description"]
    assert description["input_sampling_rate"] == "32kHz (PaSST), 16kHz (EAT)"
    assert description["audio_modelling"] == "PaSST, EAT" and description["text_modelling"] == "RoBERTa-large"
    assert description["audio_augmentation"] == "mixing of two training clips (p=0.57)"
    assert "random deletion of one word (p=0.8); synonym replacement of one word (p=0.8)" in \
        description["text_augmentation"]
    assert "back-translation of each clotho training caption" in description["text_augmentation"]
    assert "LLM mix: captions of random pairs" in description["text_augmentation"]
    assert "knowledge distillation" in description["learning_scheme"]
    assert "cluster classification: cross-entropy (weight 0.05)" in description["loss_function"]
    assert description["ensemble"].startswith("Yes: weighted sum of the similarity matrices of 2 systems")
    assert "passt-sid5 0.65, eat-sid5 0.35" in description["ensemble"]
    assert description["optimizer"] == "AdamW" and description["metric_monitored"] == "validation mAP@10"
    assert description["learning_rate"] == "2e-05 (passt-sid5), 1e-05 (eat-sid5), cosine down to 1e-07"
    assert system["complexity"]["total_parameters"] == 1300
    training = {entry["name"]: entry for entry in system["training_datasets"]}
    assert set(training) == {"dcase-t6 synthetic demo data", "WavCaps"}
    synthetic = training["dcase-t6 synthetic demo data"]
    assert synthetic["purpose"] == "training"
    assert synthetic["data_instances"] == {"audio": 12, "caption": 60} and synthetic["data_volume"]["caption"] > 5
    assert training["WavCaps"]["purpose"] == "pre-training" and "data_instances" not in training["WavCaps"]
    assert [entry["data_instances"]["audio"] for entry in system["validation_datasets"]] == [4]
    assert [p for p in meta_problems(meta, LABEL) if p.startswith("system")] == []


def test_draft_report_lists_the_external_resources(tmp_path, tiny_data_root):
    workdir = tmp_path / "work"
    members = _registered(workdir, tiny_data_root, tmp_path)
    system = make_system(tmp_path, 1)
    draft = tmp_path / "draft.pdf"
    result = run_dcase("--workdir", workdir, "package", "-l", system.label, "-p", system.predictions, "-m", system.meta,
                       "--draft-report", draft, "--runs", ",".join(members), "--out", tmp_path / "submission.zip")
    assert result.exit_code == 0, result.output
    text, _ = pdf_text_and_images(draft.read_bytes())
    assert "External resources" in text
    for part in ("WavCaps", "PaSST", "EAT", "RoBERTa-large", "e5-large-v2", "WordNet 3.0", "gpt-4o", "LLM",
                 "back-translation: translate each training caption", "LLM mix: merge the captions"):
        assert part in text, part
