"""rqvae.io.fsutil: atomic writes leave nothing half-done, the folder swap keeps the old folder until the new one
is in place, leftovers are found again, and both on-disk checksum formats stay what old files hold."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from rqvae.io import fsutil


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp-" in p.name or ".old-" in p.name)


def test_atomic_path_replaces_only_on_success(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "out.txt"
    with fsutil.atomic_path(target) as tmp:
        assert tmp.parent == target.parent and tmp.name.startswith(".out.txt.tmp-")
        tmp.write_text("first")
        assert not target.exists()
    assert target.read_text() == "first" and _leftovers(target.parent) == []

    with pytest.raises(RuntimeError, match="boom"), fsutil.atomic_path(target, fsync=True) as tmp:
        tmp.write_text("half")
        raise RuntimeError("boom")
    assert target.read_text() == "first", "a failed write keeps the previous content"
    assert _leftovers(target.parent) == [], "a failed write leaves no temporary file"


def test_atomic_path_removes_a_temporary_folder_on_failure(tmp_path: Path) -> None:
    with pytest.raises(OSError), fsutil.atomic_path(tmp_path / "model") as tmp:
        tmp.mkdir()
        (tmp / "weights").write_bytes(b"x")
        raise OSError("disk full")
    assert list(tmp_path.iterdir()) == []


def test_write_json_atomic_format_and_converter(tmp_path: Path) -> None:
    path = fsutil.write_json_atomic(tmp_path / "r.json", {"b": 1, "a": Path("/x")}, default=str)
    assert path.read_text() == '{\n  "b": 1,\n  "a": "/x"\n}\n'
    with pytest.raises(TypeError):
        fsutil.write_json_atomic(path, {"bad": object()})
    assert json.loads(path.read_text()) == {"b": 1, "a": "/x"} and _leftovers(tmp_path) == []


def test_write_bytes_atomic(tmp_path: Path) -> None:
    assert fsutil.write_bytes_atomic(tmp_path / "b", b"\x00\x01").read_bytes() == b"\x00\x01"


def _folder(path: Path, content: str) -> Path:
    path.mkdir()
    (path / "part-00000.parquet").write_text(content)
    return path


def test_replace_dir_keeps_the_old_folder_aside_until_the_new_one_is_in_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    final = _folder(tmp_path / "ids", "old")
    staging = _folder(fsutil.temp_path(final), "new")
    seen: list[tuple[str, str]] = []
    rmtree = fsutil.shutil.rmtree

    def spy(path: Path, *args: object, **kwargs: object) -> None:
        seen.append(((final / "part-00000.parquet").read_text(), (Path(path) / "part-00000.parquet").read_text()))
        rmtree(path, *args, **kwargs)

    monkeypatch.setattr(fsutil.shutil, "rmtree", spy)
    fsutil.replace_dir(staging, final)
    assert seen == [("new", "old")], "the old folder is deleted only once the new one is at its place"
    assert (final / "part-00000.parquet").read_text() == "new" and _leftovers(tmp_path) == []

    fresh = tmp_path / "fresh"
    fsutil.replace_dir(_folder(tmp_path / "staged", "only"), fresh)
    assert (fresh / "part-00000.parquet").read_text() == "only"


class Killed(BaseException):
    """Stands for the process being killed: nothing after it runs."""


def test_a_crash_inside_replace_dir_leaves_the_old_folder_complete_and_findable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    final = _folder(tmp_path / "ids", "old")
    staging = _folder(fsutil.temp_path(final), "new")
    rename = fsutil.os.rename
    calls: list[Path] = []

    def crash_on_second(src: Path, dst: Path) -> None:
        calls.append(Path(dst))
        if len(calls) == 2:
            raise Killed  # between the two renames
        rename(src, dst)

    monkeypatch.setattr(fsutil.os, "rename", crash_on_second)
    with pytest.raises(Killed):
        fsutil.replace_dir(staging, final)
    aside = calls[0]
    assert not final.exists() and aside.name.startswith(".ids.old-")
    assert (aside / "part-00000.parquet").read_text() == "old"

    (tmp_path / "ids.tmp").write_text("not ours")  # only names temp_path makes are touched
    assert fsutil.remove_leftovers(final) == sorted([aside, staging])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ids.tmp"]


def test_remove_leftovers_files_and_folders(tmp_path: Path) -> None:
    target = tmp_path / "model.safetensors"
    stale_file = fsutil.temp_path(target)
    stale_file.write_bytes(b"half")
    stale_dir = fsutil.temp_path(target, fsutil.ASIDE)
    stale_dir.mkdir()
    other = fsutil.temp_path(tmp_path / "config.json")
    other.write_text("{}")
    assert fsutil.remove_leftovers(target, kinds=(fsutil.TEMP,)) == [stale_file]
    assert fsutil.remove_leftovers(target) == [stale_dir]
    assert other.exists() and fsutil.remove_leftovers(target) == []


def test_sha256_formats_stay_those_on_disk(tmp_path: Path) -> None:
    """Model configs hold the bare hex (``weights_sha256``), manifests ``sha256:<hex>``: neither may change."""
    data = b"semantic ids" * 100_000  # several read chunks
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    hex_digest = hashlib.sha256(data).hexdigest()
    assert fsutil.sha256_file(path) == hex_digest
    assert fsutil.sha256_file(path, tagged=True) == f"sha256:{hex_digest}"


def test_sha256_tree_pins_the_manifest_folder_digest(tmp_path: Path) -> None:
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    (tmp_path / "model" / "sub").mkdir()
    (tmp_path / "model" / "sub" / "w.bin").write_bytes(b"\x01\x02")
    digest, files = fsutil.sha256_tree(tmp_path / "model")
    expected_files = {
        "config.json": "sha256:" + hashlib.sha256(b"{}").hexdigest(),
        "sub/w.bin": "sha256:" + hashlib.sha256(b"\x01\x02").hexdigest(),
    }
    assert files == expected_files
    text = "".join(f"{name}\0{value}\n" for name, value in expected_files.items())
    assert digest == "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def test_model_directories_keep_the_bare_hex_checksum(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from rqvae import RQVAE
    from rqvae.io.checkpoint import CONFIG_NAME, WEIGHTS_NAME, load_model, save_model

    model = RQVAE(8, [16], 8, 2, [4, 4], device="cpu")
    model.initialize(torch.randn(64, 8, generator=torch.Generator().manual_seed(0)))
    folder = save_model(model, tmp_path / "m")
    config = json.loads((folder / CONFIG_NAME).read_text())
    assert config["weights_sha256"] == fsutil.sha256_file(folder / WEIGHTS_NAME)
    assert not config["weights_sha256"].startswith("sha256:")
    assert sorted(p.name for p in folder.iterdir()) == [CONFIG_NAME, WEIGHTS_NAME]
    load_model(folder)  # the check on load reads the same format
