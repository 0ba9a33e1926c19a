"""The checkpoint's side files: the tokenizer is saved by its own save_pretrained, reading only files that resolve
inside the checkpoint (or the Hub cache blobs a snapshot links to); a link to anything else is not copied."""

import os
import shutil

import pytest
from conftest import optimum_cli
from hub_standins import checkpoint_files, write_hub_cache

from optimum_qaic_moe.sources import save_tokenizer

SECRET = "root:x:0:0:the secret a link must not leak"


def _all_text(root):
    out = []
    for d, _, names in os.walk(root):
        for name in names:
            with open(os.path.join(d, name), "rb") as f:
                out.append(f.read().decode(errors="replace"))
    return "\n".join(out)


@pytest.fixture
def linked_checkpoint(tiny_dirs, tmp_path):
    """A checkpoint whose tokenizer.json is a link inside it (fine) and whose chat_template.jinja links to a file
    outside it, standing in for /etc/passwd."""
    model = tmp_path / "model"
    shutil.copytree(tiny_dirs["qwen3_moe"], model)
    (model / "files").mkdir()
    shutil.move(model / "tokenizer.json", model / "files" / "tokenizer.json")
    (model / "tokenizer.json").symlink_to(os.path.join("files", "tokenizer.json"))
    secret = tmp_path / "passwd"
    secret.write_text(SECRET)
    (model / "chat_template.jinja").symlink_to(secret)
    return model, secret


def test_links_outside_the_checkpoint_are_not_copied(linked_checkpoint, tmp_path, capsys):
    model, secret = linked_checkpoint
    target = tmp_path / "export"
    target.mkdir()
    written = save_tokenizer(str(model), str(target))
    assert os.path.join(str(target), "tokenizer.json") in written
    assert (target / "tokenizer.json").read_text() == (model / "files" / "tokenizer.json").read_text()
    assert SECRET not in _all_text(target)
    err = capsys.readouterr().err
    assert f"[qaic] not copying chat_template.jinja from {model}: it links to {secret}, outside the model" in err


def test_hub_snapshot_links_into_blobs_are_read_and_others_are_not(tiny_dirs, tmp_path, capsys):
    secret = tmp_path / "passwd"
    secret.write_text(SECRET)
    snapshot = write_hub_cache(str(tmp_path / "cache"), "org/m", checkpoint_files(tiny_dirs["qwen3_moe"]), "3" * 40)
    os.symlink(secret, os.path.join(snapshot, "chat_template.jinja"))  # planted beside the real links
    target = tmp_path / "export"
    target.mkdir()
    save_tokenizer(snapshot, str(target))
    assert (target / "tokenizer.json").is_file()
    assert SECRET not in _all_text(target)
    assert "not copying chat_template.jinja" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_export_does_not_copy_a_link_outside_the_checkpoint(linked_checkpoint, tmp_path):
    model, secret = linked_checkpoint
    out = tmp_path / "out"
    proc = optimum_cli(
        "export",
        "qaic",
        "--model",
        model,
        "--prefill-seq-len",
        4,
        "--ctx-len",
        16,
        "--num-cores",
        2,
        "--decode-only",
        "--no-verify",
        out,
    )
    assert proc.returncode == 0, proc.stderr
    assert f"not copying chat_template.jinja from {model}: it links to {secret}" in proc.stderr
    assert (out / "tokenizer.json").is_file()
    assert SECRET not in _all_text(out)
