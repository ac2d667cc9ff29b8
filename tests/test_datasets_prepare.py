"""`python -m datasets.prepare` end to end against a local mirror serving archives in the real formats."""
import functools
import http.server
import json
import tarfile
import threading

import pytest

from datasets import prepare
from tests.fake_trees import make_fake_oxford_pets


@pytest.fixture
def mirror(tmp_path):
    """images.tar.gz, annotations.tar.gz and the split file of a fake Oxford Pets, served on 127.0.0.1."""
    source = make_fake_oxford_pets(tmp_path / "source")
    served = tmp_path / "served"
    served.mkdir()
    for folder in ("images", "annotations"):
        with tarfile.open(served / f"{folder}.tar.gz", "w:gz") as archive:
            archive.add(source / folder, arcname=folder)
    (served / "split_zhou_OxfordPets.json").write_bytes((source / "split_zhou_OxfordPets.json").read_bytes())
    handler = functools.partial(QuietHandler, directory=str(served))
    httpd = http.server.HTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", source
    httpd.shutdown()
    httpd.server_close()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def fake_expected(source):
    split = json.loads((source / "split_zhou_OxfordPets.json").read_text())
    n_classes = len({label for _, label, _ in split["train"]})
    return (n_classes, len(split["train"]), len(split["val"]), len(split["test"]))


def test_prepare_downloads_extracts_and_checks(mirror, tmp_path, monkeypatch, capsys):
    url, source = mirror
    monkeypatch.setitem(prepare.EXPECTED, "oxford_pets", fake_expected(source))
    root = tmp_path / "data"
    assert prepare.main(["oxford_pets", "--root", str(root), "--mirror", url]) == 0
    out = capsys.readouterr().out
    assert "oxford_pets: OK (classes 4, train 24, val 12, test 12)" in out
    folder = root / "oxford_pets"
    assert sorted(p.name for p in (folder / "images").iterdir()) == sorted(p.name for p in (source / "images").iterdir())
    assert (folder / "annotations" / "trainval.txt").is_file()
    assert not (folder / ".downloads").exists()  # archives removed once extracted
    assert prepare.main(["oxford_pets", "--root", str(root), "--mirror", url]) == 0  # nothing to redo


def test_check_catches_a_deleted_image_and_a_wrong_class_count(mirror, tmp_path, monkeypatch, capsys):
    url, source = mirror
    expected = fake_expected(source)
    monkeypatch.setitem(prepare.EXPECTED, "oxford_pets", expected)
    root = tmp_path / "data"
    prepare.main(["oxford_pets", "--root", str(root), "--mirror", url])
    capsys.readouterr()

    monkeypatch.setitem(prepare.EXPECTED, "oxford_pets", (expected[0] + 1, *expected[1:]))
    assert prepare.main(["oxford_pets", "--root", str(root), "--check"]) == 1
    assert f"classes {expected[0]} (expected {expected[0] + 1})" in capsys.readouterr().out

    monkeypatch.setitem(prepare.EXPECTED, "oxford_pets", expected)
    victim = sorted((root / "oxford_pets" / "images").iterdir())[0]
    victim.unlink()
    assert prepare.main(["oxford_pets", "--root", str(root), "--check"]) == 1
    out = capsys.readouterr().out
    assert "oxford_pets: FAILED: 1 of" in out and victim.name in out


def test_offline_prepare_fails_with_the_url_and_keeps_going(tmp_path, capsys):
    assert prepare.main(["eurosat", "--root", str(tmp_path), "--mirror", "http://127.0.0.1:9"]) == 1
    out = capsys.readouterr().out
    assert "eurosat: FAILED: Could not download http://127.0.0.1:9/EuroSAT.zip" in out


def test_archive_members_escaping_the_folder_are_refused(tmp_path):
    evil = tmp_path / "evil.tar"
    payload = tmp_path / "payload.txt"
    payload.write_text("x")
    with tarfile.open(evil, "w") as archive:
        archive.add(payload, arcname="../outside.txt")
    with pytest.raises(prepare.PrepareError):
        prepare.safe_extract(str(evil), str(tmp_path / "target"))
    assert not (tmp_path / "outside.txt").exists()


def test_manual_datasets_print_instructions(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(prepare, "fetch_drive_file", lambda *args: None)
    prepare.main(["stanford_cars", "--root", str(tmp_path)])
    out = capsys.readouterr().out
    assert "download by hand" in out and "cars_train" in out
