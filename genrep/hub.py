"""Publishing a dataset folder to the Hugging Face Hub (`genrep-shards push`).

The folder goes up as it is, in one commit: its shards, manifest, config and card (whose front
matter is the hub's dataset metadata), never the lock file or temporary files. Shards of an
earlier push that the dataset no longer has are deleted in the same commit, so the repository's
`shard-*.tar` are exactly the dataset's. Needs the optional extra `pip install 'genrep[hub]'`.
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from genrep.card import CARD
from genrep.errors import NetworkError, UsageError, one_line
from genrep.manifest import CONFIG, MANIFEST
from genrep.shards import SHARD_RE

REPO_ID = re.compile(r"^[\w.-]+/[\w.-]+$")
HUB = "https://huggingface.co"


@dataclass
class Upload:
    """What a push sends: files to add (name in the repository -> local path), names to delete."""

    add: dict[str, Path]
    delete: list[str]

    @property
    def bytes(self) -> int:
        return sum(path.stat().st_size for path in self.add.values())


def dataset_files(folder: Path, manifest: dict[str, Any]) -> dict[str, Path]:
    """The files of a complete dataset folder that make the dataset, by name."""
    names = [entry["name"] for entry in manifest["shards"]] + [MANIFEST, CONFIG, CARD]
    missing = [name for name in names if not (folder / name).is_file()]
    if missing:
        raise UsageError(f"{folder} lacks {', '.join(missing[:5])}; finish it with genrep-generate")
    return {name: folder / name for name in names}


def plan_upload(files: dict[str, Path], remote: list[str]) -> Upload:
    """Add `files`; delete the remote shards that are not among them."""
    stale = sorted(name for name in remote if SHARD_RE.match(name) and name not in files)
    return Upload(dict(files), stale)


def _hub() -> Any:
    try:
        return importlib.import_module("huggingface_hub")
    except ImportError:
        raise UsageError(
            "pushing to the Hugging Face Hub needs huggingface_hub: pip install 'genrep[hub]'"
        ) from None


def _network_errors(hub: Any) -> tuple[type[BaseException], ...]:
    """What a failed request raises: OSError (huggingface_hub's HTTP and offline errors, requests'
    errors), or the transport errors of httpx, which newer huggingface_hub releases use."""
    errors: list[type[BaseException]] = [OSError]
    for name in ("httpx", "httpx2"):
        try:
            errors.append(importlib.import_module(name).TransportError)
        except (ImportError, AttributeError):
            continue
    return tuple(errors)


@dataclass
class HubClient:
    """huggingface_hub and an authenticated HfApi, checked before any slow work."""

    hub: Any
    api: Any


def hub_client(repo_id: str) -> HubClient:
    """The client for pushing to `repo_id`; one line when the id, the extra or a token is missing."""
    if not REPO_ID.match(repo_id):
        raise UsageError(f"{repo_id!r} is not a repository id; pass OWNER/NAME")
    hub = _hub()
    token = hub.get_token()
    if not token:
        raise UsageError(
            "no Hugging Face token: run `hf auth login` (or `huggingface-cli login`) or set HF_TOKEN"
        )
    return HubClient(hub, hub.HfApi(token=token))


def push(
    client: HubClient,
    folder: Path,
    manifest: dict[str, Any],
    repo_id: str,
    *,
    private: bool | None = None,
    message: str | None = None,
) -> tuple[Upload, str]:
    """Upload a verified dataset folder to the dataset repository `repo_id` in one commit;
    returns what was sent and the commit's URL."""
    hub, api = client.hub, client.api
    files = dataset_files(folder, manifest)
    try:
        api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
        upload = plan_upload(files, api.list_repo_files(repo_id, repo_type="dataset"))
        operations = [
            hub.CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(path))
            for name, path in upload.add.items()
        ] + [hub.CommitOperationDelete(path_in_repo=name) for name in upload.delete]
        info = api.create_commit(
            repo_id,
            operations,
            commit_message=message or f"genrep dataset {folder.name}",
            repo_type="dataset",
        )
    except _network_errors(hub) as err:
        text = one_line(str(err)) or type(err).__name__
        raise NetworkError(
            f"push to {repo_id} failed ({text[:300]}); nothing was committed: check the network, "
            "the token's write access and HF_HUB_OFFLINE, then rerun"
        ) from None
    return upload, getattr(info, "commit_url", None) or f"{HUB}/datasets/{repo_id}"
