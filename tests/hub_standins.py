"""Stand-ins for the Hugging Face Hub, which these machines cannot reach.

- ``write_hub_cache``: a Hub cache laid out exactly as ``huggingface_hub`` leaves a download
  (``models--org--name/{blobs/<oid>, snapshots/<commit>/<file> -> ../../blobs/<oid>, refs/<name>}``), so the
  real ``huggingface_hub`` and transformers resolve ``org/name`` from it offline.
- ``UploadStandIn``: a local HTTP server answering the three Hub endpoints an upload uses (create repo, preupload,
  commit), recording what was committed. The real ``huggingface_hub`` client talks to it through ``HF_ENDPOINT``.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def write_hub_cache(cache_dir: str, repo_id: str, files: dict, commit: str, refs: tuple = ()) -> str:
    """Add commit ``commit`` of model ``repo_id`` holding ``files`` ({repo path: local file}) to the cache, with
    each name in ``refs`` pointing at it. Blobs are named as downloads name them: the sha256 of an LFS file
    (weights), the git blob sha1 of any other. Returns the snapshot directory."""
    repo = os.path.join(cache_dir, "models--" + repo_id.replace("/", "--"))
    snapshot = os.path.join(repo, "snapshots", commit)
    os.makedirs(os.path.join(repo, "blobs"), exist_ok=True)
    for path, source in files.items():
        with open(source, "rb") as f:
            data = f.read()
        if path.endswith(".safetensors"):
            oid = hashlib.sha256(data).hexdigest()
        else:
            oid = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
        blob = os.path.join(repo, "blobs", oid)
        with open(blob, "wb") as f:
            f.write(data)
        link = os.path.join(snapshot, path)
        os.makedirs(os.path.dirname(link), exist_ok=True)
        os.symlink(os.path.relpath(blob, os.path.dirname(link)), link)
    os.makedirs(os.path.join(repo, "refs"), exist_ok=True)
    for ref in refs:
        with open(os.path.join(repo, "refs", ref), "w") as f:
            f.write(commit)  # no newline, as huggingface_hub writes it
    return snapshot


def checkpoint_files(model_dir: str, prefix: str = "") -> dict:
    return {prefix + name: os.path.join(model_dir, name) for name in sorted(os.listdir(model_dir))}


class UploadStandIn:
    """``with UploadStandIn() as hub: os.environ["HF_ENDPOINT"] = hub.endpoint`` ... ``hub.commits``: one dict
    per commit, {"repo": ..., "revision": ..., "summary": ..., "files": {path: bytes}}; ``hub.repos``: created."""

    def __init__(self):
        self.commits, self.repos = [], []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _reply(self, code: int, payload: dict):
                body = json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _body(self) -> bytes:
                data = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                return gzip.decompress(data) if self.headers.get("Content-Encoding") == "gzip" else data

            def do_GET(self):
                self._reply(404, {"error": "not served by the stand-in"})

            def do_POST(self):
                body = self._body()
                if self.path == "/api/repos/create":
                    request = json.loads(body)
                    repo = f"{request.get('organization') or 'user'}/{request['name']}"
                    owner.repos.append(repo)
                    return self._reply(200, {"url": f"{owner.endpoint}/{repo}", "name": repo, "id": repo})
                parts = self.path.split("/")  # /api/models/{org}/{name}/{preupload|commit}/{revision}
                if len(parts) == 7 and parts[5] == "preupload":
                    files = json.loads(body)["files"]  # small files go inline in the commit
                    return self._reply(
                        200,
                        {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]},
                    )
                if len(parts) == 7 and parts[5] == "commit":
                    owner.commits.append(_parse_commit(f"{parts[3]}/{parts[4]}", parts[6], body))
                    oid = "0" * 40
                    return self._reply(
                        200, {"commitOid": oid, "commitUrl": f"{owner.endpoint}/{parts[3]}/{parts[4]}/commit/{oid}"}
                    )
                self._reply(404, {"error": "not served by the stand-in"})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_port}"

    def __enter__(self):
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def _parse_commit(repo: str, revision: str, body: bytes) -> dict:
    commit = {"repo": repo, "revision": revision, "files": {}}
    for line in body.decode().splitlines():
        item = json.loads(line)
        if item["key"] == "header":
            commit["summary"] = item["value"]["summary"]
        elif item["key"] == "file":
            commit["files"][item["value"]["path"]] = base64.b64decode(item["value"]["content"])
    return commit
