"""Scoring retrieval as the organisers do: ``matrices`` (similarity matrices: submission CSV and .npz, one
reader and writer), ``ground_truth`` (multi-relevance files and captions files, aligned to a matrix),
``metrics`` (vectorised R@K and mAP@K), ``evaluation`` (the ``evaluate`` command's result)."""
