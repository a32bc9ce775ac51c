"""The loopback Hub (tests/hub_server.py) against the official huggingface_hub client, nothing mocked."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import huggingface_hub
import pytest
from hub_server import HubServer, git_blob_oid
from huggingface_hub import HfApi, hf_hub_download, snapshot_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

README = "---\nlicense: mit\ntags:\n- gan\n---\n# A test model\n"


def _make_folder(root: Path) -> dict[str, bytes]:
    """A model folder: a binary weights file (every byte value), a JSON config, a README and a nested file."""
    files = {
        "model.safetensors": bytes(range(256)) * 40 + b"\x00\xff" * 7,
        "config.json": json.dumps({"resolution": 64, "z_dim": 100}).encode(),
        "README.md": README.encode(),
        "extra/notes/rule.txt": "règle: œil → fenêtre\n".encode(),
    }
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return files


def _files_under(folder: str | Path) -> dict[str, bytes]:
    folder = Path(folder)
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_server_listens_on_loopback_only(hub_server: HubServer):
    assert hub_server.address[0] == "127.0.0.1"
    assert hub_server.endpoint.startswith("http://127.0.0.1:")
    # Any other address of this machine must refuse the connection.
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect(("10.255.255.255", 1))  # no packet is sent; picks the outgoing interface
        other_ip = probe.getsockname()[0]
    except OSError:
        other_ip = "0.0.0.0"
    finally:
        probe.close()
    if other_ip.startswith("127.") or other_ip == "0.0.0.0":
        pytest.skip("no non-loopback interface to probe")
    with pytest.raises(OSError):
        socket.create_connection((other_ip, hub_server.address[1]), timeout=2).close()


def test_fixture_points_the_client_at_the_loopback_hub(hub):
    assert huggingface_hub.constants.ENDPOINT == hub.endpoint
    assert huggingface_hub.hf_hub_url("a/b", "c.json").startswith(hub.endpoint + "/a/b/resolve/main/")
    assert Path(huggingface_hub.constants.HF_HUB_CACHE) == hub.cache_dir
    assert huggingface_hub.whoami()["name"] == hub.username  # module-level api + HF_TOKEN
    assert HfApi().endpoint == hub.endpoint


def test_subprocesses_inherit_the_hub_through_the_environment(hub):
    repo_id = hub.repo_id("env")
    huggingface_hub.create_repo(repo_id)
    huggingface_hub.upload_file(path_or_fileobj=b"from a child", path_in_repo="a.txt", repo_id=repo_id)
    code = f"import huggingface_hub as h; print(open(h.hf_hub_download({repo_id!r}, 'a.txt')).read())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "from a child"
    assert any(hub.cache_dir.glob("models--*/snapshots/*/a.txt"))  # the child used the test's cache


def test_create_repo_public_private_and_exist_ok(hub):
    repo_id = hub.repo_id("created")
    url = huggingface_hub.create_repo(repo_id)
    assert url.repo_id == repo_id and url.endpoint == hub.endpoint
    with pytest.raises(HfHubHTTPError) as excinfo:
        huggingface_hub.create_repo(repo_id)
    assert excinfo.value.response.status_code == 409
    assert huggingface_hub.create_repo(repo_id, exist_ok=True).repo_id == repo_id

    info = huggingface_hub.model_info(repo_id)
    assert info.private is False
    assert [s.rfilename for s in info.siblings] == [".gitattributes"]  # the initial commit, as on the Hub

    private_id = hub.repo_id("secret")
    HfApi().create_repo(private_id, private=True)
    assert HfApi().model_info(private_id).private is True
    with pytest.raises(RepositoryNotFoundError):
        HfApi(token=False).model_info(private_id)  # anonymous: a private repo does not exist
    assert HfApi(token=False).model_info(repo_id).id == repo_id

    # A bare name goes to the token owner's namespace.
    bare = hub.repo_id("bare").split("/")[1]
    assert huggingface_hub.create_repo(bare).repo_id == f"{hub.username}/{bare}"


def test_upload_folder_then_snapshot_download_is_bit_identical(hub, tmp_path):
    repo_id = hub.repo_id("model")
    files = _make_folder(tmp_path / "src")
    api = HfApi()
    api.create_repo(repo_id)
    commit = api.upload_folder(repo_id=repo_id, folder_path=tmp_path / "src", commit_message="weights")

    info = api.model_info(repo_id)
    assert info.sha == commit.oid
    assert commit.commit_url == f"{hub.endpoint}/{repo_id}/commit/{commit.oid}"
    assert info.card_data["license"] == "mit" and info.card_data["tags"] == ["gan"]
    expected = sorted([*files, ".gitattributes"])
    assert sorted(s.rfilename for s in info.siblings) == expected
    assert api.list_repo_files(repo_id) == expected
    tree = {f.path: f for f in api.list_repo_tree(repo_id, recursive=True) if hasattr(f, "size")}
    assert tree["model.safetensors"].size == len(files["model.safetensors"])
    assert tree["model.safetensors"].blob_id == git_blob_oid(files["model.safetensors"])
    assert sorted(f.path for f in api.list_repo_tree(repo_id, "extra")) == ["extra/notes"]

    local = snapshot_download(repo_id)
    assert Path(local).is_relative_to(hub.cache_dir)
    assert Path(local).name == commit.oid
    downloaded = _files_under(local)
    assert downloaded.pop(".gitattributes").startswith(b"*.bin")
    assert downloaded == files

    # Uploading the same folder again changes nothing: no new commit.
    again = api.upload_folder(repo_id=repo_id, folder_path=tmp_path / "src")
    assert again.oid == commit.oid


def test_old_commits_stay_downloadable_by_sha(hub):
    repo_id = hub.repo_id("versions")
    api = HfApi()
    api.create_repo(repo_id)
    first = api.upload_file(path_or_fileobj=b"old weights", path_in_repo="w.bin", repo_id=repo_id)
    second = api.upload_file(path_or_fileobj=b"new weights!", path_in_repo="w.bin", repo_id=repo_id)
    assert first.oid != second.oid and len(first.oid) == 40

    assert Path(hf_hub_download(repo_id, "w.bin", revision=first.oid)).read_bytes() == b"old weights"
    assert Path(hf_hub_download(repo_id, "w.bin", revision="main")).read_bytes() == b"new weights!"
    assert Path(hf_hub_download(repo_id, "w.bin")).read_bytes() == b"new weights!"
    assert api.model_info(repo_id, revision=first.oid).sha == first.oid
    assert [c.commit_id for c in api.list_repo_commits(repo_id)][:2] == [second.oid, first.oid]

    api.delete_file("w.bin", repo_id=repo_id)
    assert api.list_repo_files(repo_id) == [".gitattributes"]
    assert Path(hf_hub_download(repo_id, "w.bin", revision=second.oid)).read_bytes() == b"new weights!"


def test_branches(hub):
    repo_id = hub.repo_id("branchy")
    api = HfApi()
    api.create_repo(repo_id)
    base = api.upload_file(path_or_fileobj=b"v1", path_in_repo="rule.json", repo_id=repo_id)
    api.create_branch(repo_id, branch="experiment")
    with pytest.raises(HfHubHTTPError):
        api.create_branch(repo_id, branch="experiment")
    api.create_branch(repo_id, branch="experiment", exist_ok=True)
    on_branch = api.upload_file(path_or_fileobj=b"v2", path_in_repo="rule.json", repo_id=repo_id, revision="experiment")

    assert Path(hf_hub_download(repo_id, "rule.json", revision="experiment")).read_bytes() == b"v2"
    assert Path(hf_hub_download(repo_id, "rule.json")).read_bytes() == b"v1"
    assert Path(snapshot_download(repo_id, revision="experiment")).name == on_branch.oid
    refs = {b.name: b.target_commit for b in api.list_repo_refs(repo_id).branches}
    assert refs == {"main": base.oid, "experiment": on_branch.oid}
    api.create_tag(repo_id, tag="v1.0", revision=base.oid)
    assert Path(hf_hub_download(repo_id, "rule.json", revision="v1.0")).read_bytes() == b"v1"


def test_pull_requests(hub, tmp_path):
    repo_id = hub.repo_id("prs")
    files = _make_folder(tmp_path / "src")
    api = HfApi()
    api.create_repo(repo_id)
    via_folder = api.upload_folder(repo_id=repo_id, folder_path=tmp_path / "src", create_pr=True)  # opens the PR first
    via_commit = api.upload_file(path_or_fileobj=b"{}", path_in_repo="config.json", repo_id=repo_id, create_pr=True)
    assert via_folder.pr_url == f"{hub.endpoint}/{repo_id}/discussions/1" and via_folder.pr_num == 1
    assert via_commit.pr_revision == "refs/pr/2"

    assert api.list_repo_files(repo_id) == [".gitattributes"]  # main untouched
    pr1 = hf_hub_download(repo_id, "config.json", revision="refs/pr/1")
    assert Path(pr1).read_bytes() == files["config.json"]
    assert Path(hf_hub_download(repo_id, "config.json", revision="refs/pr/2")).read_bytes() == b"{}"
    prs = api.list_repo_refs(repo_id, include_pull_requests=True).pull_requests
    assert [(p.ref, p.target_commit) for p in prs] == [("refs/pr/1", via_folder.oid), ("refs/pr/2", via_commit.oid)]


def test_typed_errors(hub, tmp_path):
    repo_id = hub.repo_id("errors")
    api = HfApi()
    api.create_repo(repo_id)
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download(f"{hub.username}/does-not-exist", "config.json")
    with pytest.raises(RepositoryNotFoundError):
        api.model_info(f"{hub.username}/does-not-exist")
    with pytest.raises(RepositoryNotFoundError):
        snapshot_download(f"{hub.username}/does-not-exist")
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(repo_id, ".gitattributes", revision="no-such-branch")
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(repo_id, ".gitattributes", revision="0" * 40)
    with pytest.raises(RevisionNotFoundError):
        snapshot_download(repo_id, revision="no-such-branch")
    with pytest.raises(EntryNotFoundError):
        hf_hub_download(repo_id, "missing.json")
    assert api.file_exists(repo_id, ".gitattributes") and not api.file_exists(repo_id, "missing.json")
    assert not api.repo_exists(f"{hub.username}/does-not-exist")
    with pytest.raises(ValueError, match="Invalid metadata"):  # README front matter validated server-side
        api.upload_file(path_or_fileobj=b"---\nlicense: [mit\n---\n", path_in_repo="README.md", repo_id=repo_id)


def test_second_download_is_served_from_the_local_cache(hub):
    repo_id = hub.repo_id("cached")
    api = HfApi()
    api.create_repo(repo_id)
    commit = api.upload_file(path_or_fileobj=b"x" * 1000, path_in_repo="w.bin", repo_id=repo_id)
    resolve = f"/{repo_id}/resolve/"

    first = hf_hub_download(repo_id, "w.bin")
    assert hub.count("GET", resolve) == 1
    # By branch: one HEAD to learn the current commit, no second GET.
    assert hf_hub_download(repo_id, "w.bin") == first
    assert hub.count("GET", resolve) == 1
    # By commit sha: no request at all.
    heads = hub.count("HEAD", resolve)
    assert hf_hub_download(repo_id, "w.bin", revision=commit.oid) == first
    assert (hub.count("GET", resolve), hub.count("HEAD", resolve)) == (1, heads)
    # Offline, the cache still answers.
    assert hf_hub_download(repo_id, "w.bin", local_files_only=True) == first
    snapshot_download(repo_id)
    assert hub.count("GET", resolve) == 2  # only .gitattributes was new
