"""Small models saved as the real ones are, for tests that load them from a folder."""

from __future__ import annotations

from pathlib import Path


def save_roberta_with_pooler(folder: Path, hidden: int = 32, layers: int = 2) -> Path:
    """A RoBERTa saved with ``save_pretrained`` as the hub's roberta-large loads: ``RobertaModel`` with its
    pooler, a byte-level BPE ``RobertaTokenizerFast`` (trained here on a few captions), hub dropouts of 0.1.
    Only the sizes are small."""
    from dcase_t6.models.text import save_random_roberta

    captions = ["a dog barks in the distance", "rain falls on a metal roof", "a bell rings twice",
                "wind blows through the trees", "people talk in a busy hall", "a car passes by quickly"] * 4
    return save_random_roberta(folder, captions, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
                               intermediate_size=2 * hidden, max_position_embeddings=66)
