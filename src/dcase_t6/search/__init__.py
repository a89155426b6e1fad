"""Search over your own sounds: ``index build`` embeds every audio file of a folder into an index folder
(``store``: the manifest, the memory-mapped vectors, the file table; ``scan``: the folder's files; ``build``:
incremental, resumable, atomic), and ``search`` ranks them against a caption or an example sound (``ranking``:
exact top-K in bounded memory, FAISS IVF-Flat above a measured size; ``query``: the index's own model)."""
