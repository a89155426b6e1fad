"""The Hugging Face hub, through ``huggingface_hub``: upload a model folder, download one by its repo id.

The endpoint is ``HF_ENDPOINT`` (default https://huggingface.co) and the download cache ``HF_HUB_CACHE``, both
read when called; the token is the library's (``HF_TOKEN`` or ``hf auth login``); ``HF_HUB_OFFLINE=1`` forbids
the network. Every failure (no network,
offline mode, no token, no such repo, no permission) is one ``UserError`` naming the repo and the fix.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from dcase_t6.common.errors import UserError
from dcase_t6.common.outputs import MARKER

_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


def looks_like_repo_id(text: str) -> bool:
    """Whether ``text`` has the shape of a hub repo id (``owner/name``)."""
    return bool(_REPO_ID.match(text)) and ".." not in text


def push_folder(folder: str | Path, repo_id: str, private: bool = False, message: str | None = None) -> str:
    """Create the model repo (if it does not exist) and upload every file of ``folder`` in one commit.

    Args:
        folder: the model folder (``dcase-t6 export``).
        repo_id: ``owner/name``.
        private: create the repo private (an existing repo keeps its visibility).
        message: the commit message.

    Returns:
        The commit's URL.

    Raises:
        UserError: the upload failed (offline, no token, no permission, ...).
    """
    if not looks_like_repo_id(repo_id):
        raise UserError(f"--push-to-hub {repo_id!r}: not a hub repo id; expected OWNER/NAME, e.g. my-team/passt-clotho")
    from huggingface_hub import HfApi

    api = HfApi(endpoint=os.environ.get("HF_ENDPOINT") or None)
    try:
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        commit = api.upload_folder(repo_id=repo_id, folder_path=str(folder), repo_type="model",
                                   commit_message=message or f"dcase-t6 model {Path(folder).name}",
                                   ignore_patterns=[MARKER])
    except Exception as err:  # noqa: BLE001  (every hub, network or auth failure becomes one line)
        raise UserError(f"cannot upload {folder} to the hub repo {repo_id} at {api.endpoint} ({_reason(err)}); "
                        "check the network and the token (`hf auth login` or HF_TOKEN; HF_HUB_OFFLINE must not be "
                        f"set); the folder is complete: retry, or upload it with `hf upload {repo_id} {folder}`"
                        ) from None
    return str(getattr(commit, "commit_url", commit))


def download(repo_id: str, revision: str | None = None) -> Path:
    """Download (or find in the local hub cache) a model repo's files.

    Args:
        repo_id: ``owner/name``.
        revision: a branch, tag or commit (default: main).

    Returns:
        The local folder holding the repo's files.

    Raises:
        UserError: the download failed.
    """
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, repo_type="model", revision=revision,
                                      endpoint=os.environ.get("HF_ENDPOINT") or None,
                                      cache_dir=os.environ.get("HF_HUB_CACHE") or None))
    except Exception as err:  # noqa: BLE001  (every hub, network or auth failure becomes one line)
        raise UserError(f"{repo_id}: not a local folder, and downloading it from the Hugging Face hub failed "
                        f"({_reason(err)}); check the repo id and the network (a private repo needs `hf auth "
                        "login` or HF_TOKEN), or pass the folder written by `dcase-t6 export`") from None


def _reason(err: Exception) -> str:
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text[:300]}" if text else type(err).__name__
