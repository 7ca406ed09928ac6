"""Image input through the command line (generate --image, bench) and the OpenAI-style server,
on the tiny random vision model of scripts/make_tiny_vision_model.py."""

from __future__ import annotations

import base64
import io
import json
import zlib

import pytest

import gemma3_edge
from gemma3_edge import chat, cli
from test_server import running_server
from test_vision import tiny

openai = pytest.importorskip("openai")


@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
    return tiny.write_model(tmp_path_factory.mktemp("tiny-vision-cli"))


@pytest.fixture(scope="module")
def image_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("images") / "wide.png"
    tiny.sample_images()["wide"].save(path)
    return path


def test_generate_with_image(model_files, image_file, capsys):
    text, mmproj = model_files
    code = cli.main(["generate", "describe <start_of_image> in a word.", "-m", str(text), "--mmproj", str(mmproj),
                     "--image", str(image_file), "--pan-and-scan", "-n", "4", "--temperature", "0", "-t", "2"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    # The wide sample image gets 3 Pan & Scan crops: 4 images of 256 tokens each.
    assert "images: 4 encoded, 0 from cache" in captured.err
    assert "prompt: 11" in captured.err  # 1,113 prompt tokens, as transformers' processor lays them out


def test_generate_image_without_mmproj(model_files, image_file, capsys):
    code = cli.main(["generate", "describe", "-m", str(model_files[0]), "--image", str(image_file), "-n", "1"])
    assert code == 2
    assert "without a vision tower" in capsys.readouterr().err


def test_bench_reports_image_encode(model_files, capsys):
    text, mmproj = model_files
    code = cli.main(["bench", str(text), "--mmproj", str(mmproj), "-p", "32", "-n", "4", "-r", "1", "-t", "2",
                     "--json"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    encode = report["image_encode"]
    assert encode["n_tokens"] == 256
    assert encode["n_patches"] == 4096
    assert len(encode["runs"]) == 1
    assert encode["mean"] > 0
    assert encode["cpu_mean"] > 0


def test_server_accepts_image_parts(model_files):
    text, mmproj = model_files
    model = gemma3_edge.Model(text, mmproj=mmproj, n_ctx=2048, n_threads=2)
    buffer = io.BytesIO()
    tiny.sample_images()["square"].save(buffer, format="PNG")
    url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
    messages = [{"role": "user", "content": [{"type": "text", "text": "what is this?"},
                                             {"type": "image_url", "image_url": {"url": url}}]}]
    expected_prompt = len(chat.chat_prompt(model, messages))
    with running_server(gemma3_edge.server.create_app(model)) as port:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0, timeout=120)
        response = client.chat.completions.create(model="tiny", messages=messages, max_tokens=3, temperature=0)
    assert response.usage.prompt_tokens == expected_prompt
    assert expected_prompt > 256
    assert response.choices[0].finish_reason in ("stop", "length")


def test_server_does_not_read_image_files(model_files, tmp_path):
    # A client must not make the server open files on its own disk, nor learn which exist.
    text, mmproj = model_files
    model = gemma3_edge.Model(text, mmproj=mmproj, n_ctx=2048, n_threads=2)
    image = tmp_path / "local.png"
    tiny.sample_images()["square"].save(image)
    with running_server(gemma3_edge.server.create_app(model)) as port:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0, timeout=120)
        for url in (str(image), f"file://{image}", str(tmp_path / "missing.png")):
            messages = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}]
            with pytest.raises(openai.BadRequestError, match="only as base64 data URLs"):
                client.chat.completions.create(model="tiny", messages=messages, max_tokens=1)


def test_decompression_bomb_is_a_value_error(tmp_path):
    # 100000 x 100000 pixels claimed by an 8-bit grey PNG of a few hundred bytes.
    from PIL import Image

    bomb = io.BytesIO()
    Image.new("L", (1, 1)).save(bomb, format="PNG")
    data = bytearray(bomb.getvalue())
    data[16:24] = (100000).to_bytes(4, "big") * 2  # IHDR width and height
    data[29:33] = zlib.crc32(bytes(data[12:29])).to_bytes(4, "big")  # IHDR CRC
    with pytest.raises(ValueError, match="too large to decode safely"):
        gemma3_edge.vision.load_image(bytes(data))
    with pytest.raises(ValueError, match="is a directory"):
        gemma3_edge.vision.load_image(tmp_path)
