"""Print the chance level of a retrieval set: mean metrics of 200 random rankings of the files named in PREDICTIONS.

    python scripts/chance_level.py PREDICTIONS.csv RELEVANCE.csv
"""

import sys

import numpy as np

from dcase_t6.retrieval.evaluation import evaluate
from dcase_t6.retrieval.ground_truth import read_relevance_file
from dcase_t6.retrieval.matrices import SimilarityMatrix, read_matrix


def main(predictions: str, relevance_file: str, repeats: int = 200) -> None:
    files = read_matrix(predictions).files
    truth = read_relevance_file(relevance_file)
    rng = np.random.default_rng(0)
    runs = [evaluate(SimilarityMatrix(truth.queries, files, rng.random((len(truth.queries), len(files)))), truth).scores
            for _ in range(repeats)]
    means = {key: float(np.mean([run[key] for run in runs])) for key in runs[0]}
    print(f"chance level ({repeats} random rankings of {len(files)} files): "
          + ", ".join(f"{key} {value:.4f}" for key, value in means.items()))


if __name__ == "__main__":
    main(*sys.argv[1:3])
