"""Where a registered version's content is, and how to rebuild it: `rewardflow lineage VERSION`.

A version's `dvc.<path>` tags are md5s of DVC-managed content (the data pin; with a recorded run, every stage's
deps and outputs). This module checks each in the local DVC cache and on the default remote, and prints the
commands that rebuild the version in a fresh clone: its git commit, the data pin the pipeline run logged (restored
from MLflow when the commit does not hold it: data pinned by a run and not yet committed), `dvc pull`, `dvc repro`.
"""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path
from typing import Any

import yaml

from tasks import projectlock, tracking

log = logging.getLogger(__name__)

DVC_TAG_PREFIX = "dvc."


def where(root: str | Path, hashes: dict[str, str]) -> tuple[str | None, dict[str, tuple[bool, bool | None]]]:
    """(the default remote, {path: (in the local cache, on the remote)}) for {path: md5}; on the remote is None when
    there is none or it cannot be read. A directory md5 (.dir) counts as present only with every file in it."""
    from dvc.exceptions import DvcException

    with projectlock.open_repo(root) as repo:
        if repo is None:
            return None, {path: (False, None) for path in hashes}
        remote_name = repo.config["core"].get("remote")
        remote = None
        if remote_name:
            try:
                remote = repo.cloud.get_remote_odb(remote_name, "status")
            except DvcException as err:
                log.warning("DVC remote %r cannot be read: %s", remote_name, err)
        found = {path: (bool(_present(repo.cache.local, md5)), _present(remote, md5)) for path, md5 in hashes.items()}
    return remote_name, found


def _present(odb: Any, md5: str) -> bool | None:
    if odb is None:
        return None
    from dvc_data.hashfile.hash_info import HashInfo
    from dvc_data.hashfile.tree import Tree

    try:
        if not odb.exists(md5):
            return False
        if not md5.endswith(".dir"):
            return True
        oids = {entry.value for _, _, entry in Tree.load(odb, HashInfo("md5", md5))}
        return set(odb.oids_exist(oids)) == oids
    except Exception as err:  # an unreachable remote, a corrupted listing: unknown, and said so
        log.warning("cannot check %s in %s: %s", md5, odb, err)
        return None


def _pin_files(client: Any, run_id: str, folder: str | None = None) -> list[str]:
    """The .dvc files a pipeline run logged (tasks/pinning: the data pin as the run saw it), by repository path."""
    found = []
    for entry in client.list_artifacts(run_id, folder):
        if entry.is_dir and entry.path.count("/") < 2:
            found += _pin_files(client, run_id, entry.path)
        elif entry.path.endswith(".dvc"):
            found.append(entry.path)
    return found


def _pinned_at(root: Path, commit: str, dvc_file: str) -> str | None:
    """The md5 `dvc_file` pins at `commit`, or None when it is not there."""
    shown = subprocess.run(["git", "show", f"{commit}:{dvc_file}"], cwd=root, capture_output=True, text=True)
    if shown.returncode != 0:
        return None
    return (yaml.safe_load(shown.stdout) or {}).get("outs", [{}])[0].get("md5")


def rebuild_commands(root: Path, commit: str, run_id: str, pins: dict[str, str]) -> list[str]:
    """Shell commands that rebuild a version in a fresh clone beside this checkout (so that a relative DVC remote
    resolves to the same folder). `pins`: {.dvc file: the md5 the version was trained on}."""
    origin = subprocess.run(["git", "remote", "get-url", "origin"], cwd=root, capture_output=True, text=True)
    source = origin.stdout.strip() if origin.returncode == 0 else str(root)
    clone = root.parent / f"{root.name}-rebuild-{commit[:8]}"
    commands = [f"git clone -q {source} {clone} && cd {clone}", f"git checkout -q {commit}"]
    for dvc_file, md5 in pins.items():
        if _pinned_at(root, commit, dvc_file) != md5:  # pinned by the run, not committed: the run's copy
            folder = str(Path(dvc_file).parent)
            commands.append(
                f"MLFLOW_TRACKING_URI={tracking.tracking_uri(root)} mlflow artifacts download "
                f"-u runs:/{run_id}/{dvc_file} -d {folder}"
            )
    targets = " ".join(pins)
    cache = root.resolve() / ".dvc" / "cache"
    commands += [
        f"dvc pull {targets}  # without a remote, on this machine: dvc cache dir {cache} && dvc checkout {targets}",
        "dvc repro  # with the project's virtual environment on PATH (make install, then make repro)",
    ]
    return commands


def version_lineage(client: Any, model_name: str, version: str, root: Path) -> list[str]:
    """The lines `rewardflow lineage VERSION` prints."""
    from mlflow.exceptions import MlflowException

    try:
        mv = client.get_model_version(model_name, str(version))
    except MlflowException:
        message = f"no version {version} of {model_name!r} in the MLflow registry (see rewardflow status)"
        raise LookupError(message) from None
    tags = dict(mv.tags)
    hashes = {k.removeprefix(DVC_TAG_PREFIX): v for k, v in tags.items() if k.startswith(DVC_TAG_PREFIX)}
    run_id = client.get_run(mv.run_id).data.tags.get(tracking.PARENT_TAG, mv.run_id)
    commit = tags.get("git_commit", "unknown")
    metrics = ", ".join(f"{k.removeprefix('metric.')}={v}" for k, v in sorted(tags.items()) if k.startswith("metric."))
    lines = [
        f"{model_name} version {version}: pipeline run {run_id}, git commit {commit}",
        f"  held-out metrics: {metrics or 'none recorded'}",
        f"  data: {tags.get('data_pin', 'no data pin recorded (registered before pinning existed)')}",
        f"  dvc push when registered: {tags.get('dvc_push', 'not recorded')}",
    ]
    if not hashes:
        return [*lines, "  no dvc.* tags: this version cannot be traced to DVC content"]
    remote, found = where(root, hashes)
    lines.append(f"  DVC content (md5 | in the local cache | on the default remote {remote or '(none configured)'}):")
    words = {True: "yes", False: "NO", None: "unknown" if remote else "-"}
    for path, md5 in sorted(hashes.items()):
        local, on_remote = found[path]
        lines.append(f"    {path:<36} {md5:<40} {words[local]:<4} {words[on_remote]}")
    if commit == "unknown":
        return [*lines, "  not rebuildable: it was trained outside a git repository"]
    pins = {}
    for dvc_file in _pin_files(client, run_id):
        logged = Path(client.download_artifacts(run_id, dvc_file))
        pins[dvc_file] = (yaml.safe_load(logged.read_text()) or {}).get("outs", [{}])[0].get("md5")
    if commit.endswith("-dirty"):
        lines.append(
            "  the working tree had uncommitted changes when it was trained: the data pin is restored from the "
            "pipeline run below; other changes are not (compare params with the run's logged params)"
        )
    lines.append("rebuild (metrics should equal the ones above on the same machine):")
    return lines + [f"  {c}" for c in rebuild_commands(root, commit.removesuffix("-dirty"), run_id, pins)]
