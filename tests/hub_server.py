"""A small in-memory Hugging Face Hub, served on the loopback interface, for tests.

It speaks enough of the Hub HTTP API for the *official* ``huggingface_hub`` client (no mocking): every
repository is a chain of immutable in-memory commits, branches and tags point at commit ids (40 hex digits), and
``create_repo`` makes ``main`` with an initial commit holding a ``.gitattributes``, like the real Hub. All uploads
are answered with upload mode ``"regular"``, so file contents arrive base64-encoded inside the commit (no LFS, no
Xet). Any ``Bearer`` token is accepted and belongs to the user :attr:`HubStore.username`; writes need a token,
and private repositories are invisible (404 ``RepoNotFound``) without one.

Endpoints (``{t}`` is ``models``, ``datasets`` or ``spaces``; ``{rev}`` a branch, tag, ``refs/pr/N`` or commit
id, URL-quoted as the client sends it):

* ``GET  /api/whoami-v2``                                   who owns the token
* ``POST /api/validate-yaml``                               README front matter check (400 on invalid YAML)
* ``POST /api/repos/create``, ``DELETE /api/repos/delete``  409 when the repo already exists / 404 when missing
* ``GET  /api/{t}/{repo}`` and ``/api/{t}/{repo}/revision/{rev}``  repo info: sha, siblings, private, cardData
* ``GET  /api/{t}/{repo}/tree/{rev}[/{path}]?recursive=``   tree listing (no pagination)
* ``POST /api/{t}/{repo}/paths-info/{rev}``                 info on given paths
* ``GET  /api/{t}/{repo}/refs``, ``GET /api/{t}/{repo}/commits/{rev}``
* ``GET  /api/models?filter=&search=&author=&sort=&limit=``  list models (newest ``lastModified`` first, one page);
  a repo's tags are its card's ``tags`` and ``library_name`` plus the Hub's ``base_model:<id>`` and
  ``base_model:<relation>:<id>``; ``filter`` values must all be among them
* Spaces: ``create_repo`` keeps ``sdk`` and ``hardware``, the repo info reports them (``sdk``, ``runtime``);
  ``POST /api/spaces/{repo}/hardware`` requests another flavour
* ``POST /api/{t}/{repo}/preupload/{rev}``                  always ``regular``, with the remote git oid
* ``POST /api/{t}/{repo}/commit/{rev}[?create_pr=1]``       NDJSON: header, file (base64), deletedFile/Folder
* ``POST|DELETE /api/{t}/{repo}/branch/{branch}``, ``POST /api/{t}/{repo}/tag/{rev}``
* ``POST /api/{t}/{repo}/discussions``, ``GET .../discussions/{num}``  pull requests get the ref ``refs/pr/{num}``
* ``GET|HEAD /[datasets/|spaces/]{repo}/resolve/{rev}/{path}``  with ``X-Repo-Commit``, quoted ``ETag``
  (git blob oid), ``Content-Length``; ``Range: bytes=a-[b]`` gives 206

Errors carry the ``X-Error-Code`` header the client maps onto its typed errors: ``RepoNotFound``,
``RevisionNotFound``, ``EntryNotFound``. The server binds to 127.0.0.1 only.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import re
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, quote, unquote, urlsplit

GITATTRIBUTES = b"*.bin filter=lfs diff=lfs merge=lfs -text\n*.safetensors filter=lfs diff=lfs merge=lfs -text\n"
REPO_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
URL_PREFIXES = {"model": "", "dataset": "datasets/", "space": "spaces/"}
_HEX40 = re.compile(r"[0-9a-f]{40}")
_REPO_NAME = re.compile(r"[\w.-]+/[\w.-]+")


def git_blob_oid(data: bytes) -> str:
    """The git object id of a blob (what ``git hash-object`` prints, and the Hub's ``oid`` of a regular file)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _now() -> str:
    """The current time in the Hub's date format (``2024-01-31T12:00:00.000Z``)."""
    now = datetime.now(timezone.utc)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"


class HubError(Exception):
    """An HTTP error answer; ``code`` goes to the ``X-Error-Code`` header."""

    def __init__(self, status: int, message: str, code: str | None = None, commit: str | None = None, **extra):
        super().__init__(message)
        self.status, self.message, self.code, self.commit, self.extra = status, message, code, commit, extra


@dataclass(frozen=True)
class Commit:
    """An immutable snapshot: the full file table of the repository at that commit."""

    oid: str
    parent: str | None
    title: str
    message: str
    date: str
    files: dict[str, bytes]


@dataclass
class Repo:
    repo_type: str
    repo_id: str
    private: bool
    created_at: str
    commits: dict[str, Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)  # also holds "refs/pr/N"
    tags: dict[str, str] = field(default_factory=dict)
    discussions: list[dict] = field(default_factory=list)  # number i + 1; pull requests own "refs/pr/<num>"
    space: dict = field(default_factory=dict)  # Spaces only: {"sdk": ..., "hardware": ...}

    @property
    def url_path(self) -> str:
        return URL_PREFIXES[self.repo_type] + self.repo_id


class HubStore:
    """All repositories, guarded by one lock; also records every request as ``(method, path)``."""

    def __init__(self, username: str = "tester"):
        self.username = username
        self.repos: dict[tuple[str, str], Repo] = {}
        self.requests: list[tuple[str, str]] = []
        self.lock = threading.RLock()
        self._counter = itertools.count()

    # -- lookups -----------------------------------------------------------------------------------------------
    def repo(self, repo_type: str, repo_id: str, token: str | None) -> Repo:
        repo = self.repos.get((repo_type, repo_id))
        if repo is None or (repo.private and token is None):
            raise HubError(404, f"Repository {repo_id} not found", "RepoNotFound")
        return repo

    def resolve(self, repo: Repo, revision: str) -> Commit:
        """A branch, tag, ``refs/heads/<b>``, ``refs/tags/<t>``, ``refs/pr/N`` or full commit id -> its commit."""
        name = revision.removeprefix("refs/heads/").removeprefix("refs/tags/")
        oid = repo.branches.get(name) or repo.tags.get(name)
        if oid is None and _HEX40.fullmatch(revision) and revision in repo.commits:
            oid = revision
        if oid is None:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return repo.commits[oid]

    # -- mutations ---------------------------------------------------------------------------------------------
    def new_commit(self, repo: Repo, parent: Commit | None, title: str, message: str, files: dict) -> Commit:
        seed = f"{repo.repo_type}/{repo.repo_id}|{parent.oid if parent else ''}|{title}|{next(self._counter)}"
        seed += "|" + ",".join(f"{p}:{git_blob_oid(d)}" for p, d in sorted(files.items()))
        oid = hashlib.sha1(seed.encode()).hexdigest()
        commit = Commit(oid, parent.oid if parent else None, title, message, _now(), dict(files))
        repo.commits[oid] = commit
        return commit

    def create_repo(self, repo_type: str, repo_id: str, private: bool, base_url: str) -> Repo:
        if (repo_type, repo_id) in self.repos:  # the client reads "url" even from the 409 (exist_ok=True)
            url = f"{base_url}/{self.repos[(repo_type, repo_id)].url_path}"
            raise HubError(409, f"You already created this {repo_type} repo", url=url)
        repo = Repo(repo_type, repo_id, private, _now())
        repo.branches["main"] = self.new_commit(repo, None, "initial commit", "", {".gitattributes": GITATTRIBUTES}).oid
        self.repos[(repo_type, repo_id)] = repo
        return repo

    def open_discussion(self, repo: Repo, title: str, description: str, pull_request: bool) -> dict:
        """A new discussion; a pull request also gets the branch ``refs/pr/<num>``, starting at ``main``."""
        num = len(repo.discussions) + 1
        discussion = {"num": num, "title": title, "description": description, "isPullRequest": pull_request,
                      "status": "open", "createdAt": _now()}  # fmt: skip
        repo.discussions.append(discussion)
        if pull_request:
            repo.branches[f"refs/pr/{num}"] = repo.branches["main"]
        return discussion

    def apply_commit(self, repo: Repo, revision: str, lines: list[dict], create_pr: bool) -> tuple[Commit, str]:
        """Apply NDJSON commit operations on top of branch ``revision``; returns the commit and the ref it moved."""
        base = self.resolve(repo, revision)
        ref = revision.removeprefix("refs/heads/")
        header = next((line["value"] for line in lines if line.get("key") == "header"), {})
        if not create_pr and ref not in repo.branches:
            raise HubError(400, f"Cannot commit to {revision}: not a branch")
        parent = header.get("parentCommit")
        if parent is not None and parent != base.oid:
            raise HubError(412, "A commit has happened since. Please refresh and try again.")
        files = dict(base.files)
        for line in lines:
            key, value = line.get("key"), line.get("value", {})
            if key == "file":
                if value.get("encoding", "base64") != "base64":
                    raise HubError(400, f"Unsupported encoding {value.get('encoding')!r}")
                files[value["path"]] = base64.b64decode(value["content"])
            elif key == "deletedFile":
                if files.pop(value["path"], None) is None:
                    raise HubError(404, "A file with this name doesn't exist", "EntryNotFound")
            elif key == "deletedFolder":
                prefix = value["path"].rstrip("/") + "/"
                for path in [p for p in files if p.startswith(prefix)]:
                    del files[path]
            elif key in ("lfsFile", "deletedEntries"):
                raise HubError(400, f"Operation {key!r} is not supported by the test hub (no LFS)")
            elif key != "header":
                raise HubError(400, f"Unknown commit operation {key!r}")
        commit = self.new_commit(repo, base, header.get("summary", ""), header.get("description", ""), files)
        if create_pr:  # the commit goes to a new pull request opened against `revision`
            ref = f"refs/pr/{self.open_discussion(repo, commit.title, commit.message, True)['num']}"
        repo.branches[ref] = commit.oid
        return commit, ref


def _entries(commit: Commit, prefix: str, recursive: bool) -> list[dict]:
    """Tree entries (files and folders) below folder ``prefix`` ("" for the root), sorted by path."""
    base = prefix.rstrip("/") + "/" if prefix else ""
    found: dict[str, dict] = {}
    for path, data in commit.files.items():
        if not path.startswith(base):
            continue
        parts = path[len(base) :].split("/")
        for depth in range(1, len(parts)):  # folders on the way
            folder = base + "/".join(parts[:depth])
            found.setdefault(folder, _folder_entry(commit, folder))
            if not recursive:
                break
        if recursive or len(parts) == 1:
            found[path] = {"type": "file", "oid": git_blob_oid(data), "size": len(data), "path": path}
    return [found[p] for p in sorted(found)]


def _folder_entry(commit: Commit, folder: str) -> dict:
    content = ",".join(f"{p}:{git_blob_oid(d)}" for p, d in sorted(commit.files.items()) if p.startswith(folder + "/"))
    return {"type": "directory", "oid": hashlib.sha1(content.encode()).hexdigest(), "size": 0, "path": folder}


def _card_data(commit: Commit) -> dict | None:
    """The YAML front matter of ``README.md``, if any and if it parses to a mapping."""
    text = commit.files.get("README.md", b"").decode("utf-8", "replace")
    match = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", text, re.S)
    if not match:
        return None
    try:
        import yaml

        data = yaml.safe_load(match.group(1))
    except Exception:
        return None
    return data if isinstance(data, dict) else None


def _tags(commit: Commit) -> list[str]:
    """The tags the Hub derives from a card: its ``tags``, ``library_name`` and ``base_model`` (with relation)."""
    card = _card_data(commit) or {}
    tags = [str(t) for t in card.get("tags") or []]
    if card.get("library_name"):
        tags.append(str(card["library_name"]))
    bases = card.get("base_model") or []
    for base in [bases] if isinstance(bases, str) else bases:
        tags.append(f"base_model:{base}")
        if card.get("base_model_relation"):
            tags.append(f"base_model:{card['base_model_relation']}:{base}")
    return list(dict.fromkeys(tags))


def _space_runtime(repo: Repo) -> dict:
    hardware = repo.space.get("hardware")
    return {"stage": "BUILDING", "hardware": {"current": None, "requested": hardware}, "gcTimeout": None}


_R = r"(?P<type>models|datasets|spaces)/(?P<repo>[^/]+/[^/]+)"
_RESOLVE = r"/(?:(?P<type>datasets|spaces)/)?(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)"
_ROUTES: list[tuple[str, re.Pattern, str]] = [
    (m, re.compile(p), h)
    for m, p, h in [
        ("GET", r"/api/whoami-v2", "whoami"),
        ("POST", r"/api/validate-yaml", "validate_yaml"),
        ("POST", r"/api/repos/create", "create_repo"),
        ("DELETE", r"/api/repos/delete", "delete_repo"),
        ("GET", r"/api/models", "list_models"),
        ("POST", r"/api/spaces/(?P<repo>[^/]+/[^/]+)/hardware", "space_hardware"),
        ("GET", rf"/api/{_R}(?:/revision/(?P<rev>[^/]+))?", "repo_info"),
        ("GET", rf"/api/{_R}/tree/(?P<rev>[^/]+)(?:/(?P<path>.+))?", "tree"),
        ("POST", rf"/api/{_R}/paths-info/(?P<rev>[^/]+)", "paths_info"),
        ("GET", rf"/api/{_R}/refs", "refs"),
        ("GET", rf"/api/{_R}/commits/(?P<rev>[^/]+)", "commits"),
        ("POST", rf"/api/{_R}/preupload/(?P<rev>[^/]+)", "preupload"),
        ("POST", rf"/api/{_R}/commit/(?P<rev>[^/]+)", "commit"),
        ("POST", rf"/api/{_R}/branch/(?P<rev>[^/]+)", "create_branch"),
        ("DELETE", rf"/api/{_R}/branch/(?P<rev>[^/]+)", "delete_branch"),
        ("POST", rf"/api/{_R}/tag/(?P<rev>[^/]+)", "create_tag"),
        ("POST", rf"/api/{_R}/discussions", "create_discussion"),
        ("GET", rf"/api/{_R}/discussions/(?P<num>\d+)", "discussion"),
        ("GET", _RESOLVE, "resolve"),
        ("HEAD", _RESOLVE, "resolve"),
    ]
]


class _Handler(BaseHTTPRequestHandler):
    """Routes a request to the ``h_<name>`` method; each returns ``(status, body, headers)``."""

    protocol_version = "HTTP/1.1"  # keep-alive, as the client's connection pool expects
    server: _Server

    def log_message(self, format, *args):  # noqa: A002 - silence the per-request stderr log
        pass

    def do_GET(self):
        self._dispatch(self.command)

    do_HEAD = do_POST = do_DELETE = do_GET

    # -- plumbing ----------------------------------------------------------------------------------------------
    def _dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        store = self.server.store
        self.query = parse_qs(url.query)
        self.body = self._read_body()
        auth = self.headers.get("Authorization", "")
        self.token = (auth[len("Bearer ") :].strip() or None) if auth.startswith("Bearer ") else None
        host, port = self.server.server_address[:2]
        self.base_url = f"http://{self.headers.get('Host', f'{host}:{port}')}"
        with store.lock:
            store.requests.append((method, url.path))
        try:
            for route_method, pattern, name in _ROUTES:
                match = pattern.fullmatch(url.path)
                if route_method == method and match:
                    args = {k: unquote(v) for k, v in match.groupdict().items() if v is not None}
                    if "type" in args:
                        args["type"] = REPO_TYPES.get(args["type"], args["type"])
                    with store.lock:
                        status, body, headers = getattr(self, "h_" + name)(store, **args)
                    break
            else:
                raise HubError(404, f"Not served by the test hub: {method} {url.path}")
        except HubError as err:
            headers = {"X-Error-Message": err.message}
            if err.code:
                headers["X-Error-Code"] = err.code
            if err.commit:
                headers["X-Repo-Commit"] = err.commit
            status, body = err.status, {"error": err.message, **err.extra}
        self._send(method, status, body, headers)

    def _read_body(self) -> bytes:  # the client always sends Content-Length (never a chunked body)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _send(self, method: str, status: int, body, headers: dict) -> None:
        if not isinstance(body, bytes):
            body = json.dumps(body).encode()
            headers.setdefault("Content-Type", "application/json")
        self.send_response(status)
        headers.setdefault("Content-Length", str(len(body)))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        if method != "HEAD":
            self.wfile.write(body)

    def _json(self) -> dict:
        try:
            return json.loads(self.body or b"{}")
        except ValueError as err:
            raise HubError(400, f"Invalid JSON body: {err}") from err

    def _need_token(self) -> None:
        if self.token is None:
            raise HubError(401, "Authentication required: pass a Bearer token")

    # -- account -----------------------------------------------------------------------------------------------
    def h_whoami(self, store: HubStore):
        self._need_token()
        auth = {"type": "access_token", "accessToken": {"displayName": "test-token", "role": "write"}}
        return 200, {"type": "user", "id": "0" * 24, "name": store.username, "fullname": "Test User",
                     "orgs": [], "auth": auth}, {}  # fmt: skip

    def h_validate_yaml(self, store: HubStore):
        content = self._json().get("content", "")
        match = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", content, re.S)
        if match:
            try:
                import yaml

                yaml.safe_load(match.group(1))
            except ImportError:
                pass
            except Exception as err:
                return 400, {"errors": [{"message": f"Invalid YAML: {err}"}], "warnings": []}, {}
        return 200, {"errors": [], "warnings": []}, {}

    # -- repositories ------------------------------------------------------------------------------------------
    def _repo_from_payload(self, store: HubStore) -> tuple[str, str, dict]:
        self._need_token()
        payload = self._json()
        repo_id = f"{payload.get('organization') or store.username}/{payload.get('name')}"
        if not _REPO_NAME.fullmatch(repo_id):
            raise HubError(400, f"Invalid repo name {repo_id!r}")
        return payload.get("type") or "model", repo_id, payload

    def h_create_repo(self, store: HubStore):
        repo_type, repo_id, payload = self._repo_from_payload(store)
        private = payload.get("visibility") == "private" or bool(payload.get("private"))
        repo = store.create_repo(repo_type, repo_id, private, self.base_url)
        if repo_type == "space":
            repo.space = {"sdk": payload.get("sdk"), "hardware": payload.get("hardware") or "cpu-basic"}
        return 200, {"url": f"{self.base_url}/{repo.url_path}", "name": repo_id, "id": repo_id}, {}

    def h_delete_repo(self, store: HubStore):
        repo_type, repo_id, _ = self._repo_from_payload(store)
        store.repo(repo_type, repo_id, self.token)
        del store.repos[(repo_type, repo_id)]
        return 200, {}, {}

    def h_repo_info(self, store: HubStore, type: str, repo: str, rev: str = "main"):  # noqa: A002
        r = store.repo(type, repo, self.token)
        commit = store.resolve(r, rev)
        blobs = self.query.get("blobs", ["false"])[0].lower() in ("1", "true")
        siblings = [
            {"rfilename": p, **({"size": len(d), "blobId": git_blob_oid(d)} if blobs else {})}
            for p, d in sorted(commit.files.items())
        ]
        info = {"_id": hashlib.sha1(repo.encode()).hexdigest()[:24], "id": repo, "author": repo.split("/")[0],
                "sha": commit.oid, "private": r.private, "disabled": False, "gated": False, "downloads": 0,
                "likes": 0, "tags": [], "createdAt": r.created_at, "lastModified": commit.date,
                "siblings": siblings}  # fmt: skip
        if type == "model":
            info["modelId"] = repo
        card = _card_data(commit)
        if card is not None:
            info["cardData"] = card
        if type == "space":
            info["sdk"] = r.space.get("sdk")
            info["runtime"] = _space_runtime(r)
        info["tags"] = _tags(commit)
        return 200, info, {}

    def h_list_models(self, store: HubStore):
        wanted = self.query.get("filter", [])
        search = self.query.get("search", [""])[0]
        author = self.query.get("author", [None])[0]
        found = []
        for (repo_type, repo_id), r in store.repos.items():
            if repo_type != "model" or (r.private and self.token is None):
                continue
            commit = r.commits[r.branches["main"]]
            tags = _tags(commit)
            if search not in repo_id or (author and repo_id.split("/")[0] != author):
                continue
            if all(value in tags for value in wanted):
                found.append((commit.date, repo_id, r, commit, tags))
        found.sort(key=lambda item: item[:2], reverse=True)  # newest first, like sort=lastModified
        limit = int(self.query.get("limit", [len(found)])[0])
        out = []
        for _, repo_id, r, commit, tags in found[:limit]:
            item = {"_id": hashlib.sha1(repo_id.encode()).hexdigest()[:24], "id": repo_id, "modelId": repo_id,
                    "author": repo_id.split("/")[0], "sha": commit.oid, "private": r.private, "tags": tags,
                    "lastModified": commit.date, "createdAt": r.created_at, "downloads": 0, "likes": 0,
                    "siblings": [{"rfilename": p} for p in sorted(commit.files)]}  # fmt: skip
            card = _card_data(commit)
            if card is not None:
                item["cardData"] = card
            out.append(item)
        return 200, out, {}

    def h_space_hardware(self, store: HubStore, repo: str):
        self._need_token()
        r = store.repo("space", repo, self.token)
        r.space["hardware"] = self._json().get("flavor")
        return 200, _space_runtime(r), {}

    def h_tree(self, store: HubStore, type: str, repo: str, rev: str, path: str = ""):  # noqa: A002
        commit = store.resolve(store.repo(type, repo, self.token), rev)
        path = path.strip("/")
        if path and not any(p.startswith(path + "/") for p in commit.files):
            raise HubError(404, f"Folder {path!r} not found", "EntryNotFound", commit.oid)
        recursive = self.query.get("recursive", ["false"])[0].lower() in ("1", "true")
        return 200, _entries(commit, path, recursive), {}

    def h_paths_info(self, store: HubStore, type: str, repo: str, rev: str):  # noqa: A002
        commit = store.resolve(store.repo(type, repo, self.token), rev)
        fields = parse_qs(self.body.decode())
        if not fields and self.body:
            fields = {"paths": self._json().get("paths", [])}
        out = []
        for path in fields.get("paths", []):
            path = path.strip("/")
            if path in commit.files:
                data = commit.files[path]
                out.append({"type": "file", "oid": git_blob_oid(data), "size": len(data), "path": path})
            elif any(p.startswith(path + "/") for p in commit.files):
                out.append(_folder_entry(commit, path))
        return 200, out, {}

    def h_refs(self, store: HubStore, type: str, repo: str):  # noqa: A002
        r = store.repo(type, repo, self.token)
        branches = [{"name": b, "ref": f"refs/heads/{b}", "targetCommit": oid}
                    for b, oid in sorted(r.branches.items()) if not b.startswith("refs/pr/")]  # fmt: skip
        prs = [{"name": b.rsplit("/", 1)[1], "ref": b, "targetCommit": oid}
               for b, oid in sorted(r.branches.items()) if b.startswith("refs/pr/")]  # fmt: skip
        tags = [{"name": t, "ref": f"refs/tags/{t}", "targetCommit": oid} for t, oid in sorted(r.tags.items())]
        return 200, {"branches": branches, "converts": [], "tags": tags, "pullRequests": prs}, {}

    def h_commits(self, store: HubStore, type: str, repo: str, rev: str):  # noqa: A002
        r = store.repo(type, repo, self.token)
        commit, out = store.resolve(r, rev), []
        while commit is not None:
            out.append({"id": commit.oid, "title": commit.title, "message": commit.message, "date": commit.date,
                        "authors": [{"user": store.username}]})  # fmt: skip
            commit = r.commits.get(commit.parent) if commit.parent else None
        return 200, out, {}

    # -- writing -----------------------------------------------------------------------------------------------
    def h_preupload(self, store: HubStore, type: str, repo: str, rev: str):  # noqa: A002
        self._need_token()
        commit = store.resolve(store.repo(type, repo, self.token), rev)
        files = []
        for entry in self._json().get("files", []):
            old = commit.files.get(entry["path"])
            files.append({"path": entry["path"], "uploadMode": "regular", "shouldIgnore": False,
                          "oid": git_blob_oid(old) if old is not None else None})  # fmt: skip
        return 200, {"files": files, "commitOid": commit.oid}, {}

    def h_commit(self, store: HubStore, type: str, repo: str, rev: str):  # noqa: A002
        self._need_token()
        r = store.repo(type, repo, self.token)
        try:
            lines = [json.loads(line) for line in self.body.splitlines() if line.strip()]
        except ValueError as err:
            raise HubError(400, f"Invalid NDJSON commit payload: {err}") from err
        create_pr = self.query.get("create_pr", ["0"])[0] in ("1", "true")
        commit, ref = store.apply_commit(r, rev, lines, create_pr)
        pr_url = f"{self.base_url}/{r.url_path}/discussions/{ref.rsplit('/', 1)[1]}" if create_pr else None
        return 200, {"success": True, "commitOid": commit.oid, "commitUrl": f"{self.base_url}/{r.url_path}/commit/"
                     f"{commit.oid}", "pullRequestUrl": pr_url, "hookOutput": ""}, {}  # fmt: skip

    def h_create_branch(self, store: HubStore, type: str, repo: str, rev: str):  # noqa: A002
        self._need_token()
        r = store.repo(type, repo, self.token)
        if rev in r.branches:
            raise HubError(409, f"Reference already exists: refs/heads/{rev}")
        if rev.startswith("refs/") or _HEX40.fullmatch(rev):
            raise HubError(400, f"Invalid reference for a branch: {rev}")
        start = self._json().get("startingPoint") or "main"
        r.branches[rev] = store.resolve(r, start).oid
        return 200, {}, {}

    def h_delete_branch(self, store: HubStore, type: str, repo: str, rev: str):  # noqa: A002
        self._need_token()
        r = store.repo(type, repo, self.token)
        if rev == "main":
            raise HubError(403, "Cannot delete the main branch")
        if r.branches.pop(rev, None) is None:
            raise HubError(404, f"Invalid rev id: {rev}", "RevisionNotFound")
        return 200, {}, {}

    def h_create_tag(self, store: HubStore, type: str, repo: str, rev: str):  # noqa: A002
        self._need_token()
        r = store.repo(type, repo, self.token)
        tag = self._json().get("tag", "")
        if tag in r.tags:
            raise HubError(409, f"Tag already exists: {tag}")
        r.tags[tag] = store.resolve(r, rev).oid
        return 200, {}, {}

    def h_create_discussion(self, store: HubStore, type: str, repo: str):  # noqa: A002
        self._need_token()
        payload = self._json()
        r = store.repo(type, repo, self.token)
        pull_request = bool(payload.get("pullRequest"))
        num = store.open_discussion(r, payload.get("title", ""), payload.get("description", ""), pull_request)["num"]
        return 200, {"num": num, "url": f"{self.base_url}/{r.url_path}/discussions/{num}"}, {}

    def h_discussion(self, store: HubStore, type: str, repo: str, num: str):  # noqa: A002
        r = store.repo(type, repo, self.token)
        if not 0 < int(num) <= len(r.discussions):
            raise HubError(404, f"Discussion {num} not found")
        d = r.discussions[int(num) - 1]
        return 200, {**d, "author": {"name": store.username}, "repo": {"name": repo, "type": type}, "events": [],
                     "changes": {"base": "refs/heads/main"}, "filesWithConflicts": []}, {}  # fmt: skip

    # -- downloading -------------------------------------------------------------------------------------------
    def h_resolve(self, store: HubStore, repo: str, rev: str, path: str, type: str = "model"):  # noqa: A002
        commit = store.resolve(store.repo(type, repo, self.token), rev)
        if path not in commit.files:
            raise HubError(404, f"Entry not found: {path}", "EntryNotFound", commit.oid)
        data = commit.files[path]
        headers = {"X-Repo-Commit": commit.oid, "ETag": f'"{git_blob_oid(data)}"', "Accept-Ranges": "bytes",
                   "Content-Type": "application/octet-stream",
                   "Content-Disposition": f"inline; filename*=UTF-8''{quote(path.rsplit('/', 1)[-1])}"}  # fmt: skip
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", "").strip())
        if match and int(match.group(1)) < len(data):
            start = int(match.group(1))
            end = min(int(match.group(2) or len(data) - 1), len(data) - 1)
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            return 206, data[start : end + 1], headers
        return 200, data, headers


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    store: HubStore


class HubServer:
    """The test Hub, served from a background thread on ``127.0.0.1`` (``port=0``: a free port).

    Use as a context manager, or call :meth:`start` / :meth:`stop`. ``endpoint`` is the base URL to hand to
    ``HF_ENDPOINT``; ``store`` holds the repositories and the request log (``store.requests``).
    """

    def __init__(self, port: int = 0, username: str = "tester"):
        self.store = HubStore(username)
        self._httpd = _Server(("127.0.0.1", port), _Handler)
        self._httpd.store = self.store
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> tuple[str, int]:
        return self._httpd.server_address[:2]

    @property
    def endpoint(self) -> str:
        host, port = self.address
        return f"http://{host}:{port}"

    def start(self) -> HubServer:
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="test-hub", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
