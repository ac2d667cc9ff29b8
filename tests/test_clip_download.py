"""Weights by name or path: verified, resumable downloads from a local server, clear offline errors."""
import hashlib
import http.server
import socket
import threading

import pytest
import torch

import clip
from clip import clip as clip_module
from clip.download import DownloadError, download_file
from clip.tiny import save_tiny_clip, tiny_state_dict

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB


class RangeHandler(http.server.BaseHTTPRequestHandler):
    """Serves PAYLOAD at any path, honouring 'Range: bytes=N-' like a real file server."""

    payload = PAYLOAD

    def do_GET(self):
        # Recorded before the body is sent: the client may finish (and the test assert) before
        # this thread runs another line after the write.
        self.server.requests.append(self.headers.get("Range"))
        start = 0
        if self.headers.get("Range", "").startswith("bytes="):
            start = int(self.headers["Range"][6:].split("-")[0])
            self.send_response(206)
        else:
            self.send_response(200)
        body = self.payload[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = http.server.HTTPServer(("127.0.0.1", 0), RangeHandler)
    httpd.requests = []
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd, f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_download_verifies_checksum_and_shows_progress(server, tmp_path, capsys):
    _, url = server
    target = tmp_path / "cache" / "weights.pt"
    download_file(f"{url}/weights.pt", str(target), sha256=hashlib.sha256(PAYLOAD).hexdigest())
    assert target.read_bytes() == PAYLOAD
    assert "weights.pt" in capsys.readouterr().err  # the tqdm bar


def test_download_resumes_a_partial_file(server, tmp_path):
    httpd, url = server
    target = tmp_path / "weights.pt"
    (tmp_path / "weights.pt.part").write_bytes(PAYLOAD[:1000])
    download_file(f"{url}/weights.pt", str(target), sha256=hashlib.sha256(PAYLOAD).hexdigest())
    assert target.read_bytes() == PAYLOAD
    assert httpd.requests == ["bytes=1000-"]


def test_corrupted_download_is_refused_and_leaves_nothing(server, tmp_path):
    _, url = server
    target = tmp_path / "weights.pt"
    with pytest.raises(DownloadError, match="expected 0000"):
        download_file(f"{url}/weights.pt", str(target), sha256="0" * 64)
    assert list(tmp_path.iterdir()) == []


def test_offline_error_names_url_and_where_to_put_the_file(tmp_path):
    url = f"http://127.0.0.1:{free_port()}/clip/models/{'a' * 64}/ViT-B-16.pt"
    with pytest.raises(clip.CLIPWeightsError) as error:
        clip_module._download(url, str(tmp_path))
    message = str(error.value)
    assert url in message and str(tmp_path / "ViT-B-16.pt") in message and "offline" in message


def test_model_name_resolves_through_the_cache_with_checksum(server, tmp_path, monkeypatch):
    httpd, url = server
    weights = tmp_path / "tiny.pt"
    save_tiny_clip(weights)
    data = weights.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    monkeypatch.setattr(RangeHandler, "payload", data)
    monkeypatch.setitem(clip_module._MODELS, "Tiny/1", f"{url}/clip/models/{digest}/Tiny-1.pt")
    monkeypatch.setenv("CLIP_CACHE_DIR", str(tmp_path / "cache"))
    state_dict = clip.load_state_dict_from("Tiny/1")
    assert (tmp_path / "cache" / "Tiny-1.pt").read_bytes() == data
    assert torch.equal(state_dict["text_projection"], tiny_state_dict()["text_projection"])
    clip.load_state_dict_from("Tiny/1")  # cached: no second request
    assert len(httpd.requests) == 1


def test_load_from_a_path_returns_model_and_clip_preprocessing(tmp_path):
    model, preprocess = clip.load(str(save_tiny_clip(tmp_path / "tiny.pt")))
    assert model.dtype == torch.float32 and model.visual.input_resolution == 32
    from PIL import Image

    assert preprocess(Image.new("L", (50, 40))).shape == (3, 32, 32)


def test_unknown_name_and_unreadable_file_get_one_clear_error(tmp_path):
    with pytest.raises(clip.CLIPWeightsError, match="ViT-B/16"):
        clip.load_state_dict_from("ViT-B/61")
    bad = tmp_path / "broken.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(clip.CLIPWeightsError, match="broken.pt"):
        clip.load_state_dict_from(str(bad))


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_official_torchscript_archive_is_read_through_jit(tmp_path, monkeypatch):
    """Only an archive whose SHA256 is an official one goes through torch.jit.load."""
    class Holder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            for name, tensor in tiny_state_dict().items():
                self.register_buffer(name.replace(".", "__"), tensor)

    path = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.script(Holder()), str(path))
    with pytest.raises(clip.CLIPWeightsError, match="matches no official CLIP checksum"):
        clip.load_state_dict_from(str(path))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    monkeypatch.setitem(clip_module._MODELS, "Tiny/1", f"http://127.0.0.1:9/clip/models/{digest}/Tiny-1.pt")
    loaded = clip.load_state_dict_from(str(path))
    assert "text_projection" in loaded
