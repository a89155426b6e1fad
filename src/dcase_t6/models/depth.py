"""An encoder's parameters by depth: what freezing the lower blocks and layer-wise learning rates need to know.

Each audio backbone and the text encoder answer ``encoder_layers()`` with an ``EncoderLayers``: the parameters
below the first transformer block (patch or token embedding, positional tables, CLS tokens, the norm applied to
the embedded input) and the blocks from input to output. The encoder's other parameters (e.g. PaSST's final
norm) sit above the last block. ``dcase_t6.training.finetuning`` freezes and assigns learning rates from it.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class EncoderLayers:
    """An encoder's depth levels, lowest first.

    Attributes:
        embeddings: the parameters below the first block (embedding level).
        blocks: the transformer blocks (conv blocks for tiny-cnn), from input to output.
    """

    embeddings: tuple[nn.Parameter, ...]
    blocks: tuple[nn.Module, ...]

    @classmethod
    def of(cls, embeddings: list[nn.Module | nn.Parameter | None], blocks) -> EncoderLayers:
        """Collect the embedding-level parameters of modules and loose parameters (None entries are skipped).

        Args:
            embeddings: modules (all their parameters) and parameters below the first block.
            blocks: the blocks, input to output.

        Returns:
            The levels.
        """
        parameters: list[nn.Parameter] = []
        for item in embeddings:
            if isinstance(item, nn.Parameter):
                parameters.append(item)
            elif item is not None:
                parameters.extend(item.parameters())
        return cls(tuple(parameters), tuple(blocks))

    def depths(self) -> dict[int, int]:
        """Each listed parameter's depth below the top (by ``id``): 0 for the last block, ``len(blocks)`` for the
        embeddings. A parameter that several blocks share (BEATs' relative-position table) has the depth of the
        lowest. Parameters not listed are above the last block (depth 0)."""
        count = len(self.blocks)
        found = {id(parameter): count for parameter in self.embeddings}
        for index, block in enumerate(self.blocks):
            for parameter in block.parameters():
                found.setdefault(id(parameter), count - 1 - index)
        return found

    def frozen(self, blocks: int) -> list[nn.Parameter]:
        """The parameters of the embeddings and the first ``blocks`` blocks (none for 0)."""
        if blocks <= 0:
            return []
        return [*self.embeddings, *(parameter for block in self.blocks[:blocks] for parameter in block.parameters())]
