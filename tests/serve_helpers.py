"""Shared pieces of the serving tests: a tiny decoder and encoder with real trained tokenizers, saved adapters,
and a real uvicorn server on a free localhost port that is always shut down."""

from __future__ import annotations

import contextlib
import copy
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import torch
import uvicorn

from groundup import peft as P
from groundup.config import preset
from groundup.models import DecoderLM, EncoderForPreTraining
from groundup.tokenizer import train_bpe, train_wordpiece
from groundup.train.checkpoint import save_checkpoint

TEXT = (Path(__file__).resolve().parents[1] / "groundup" / "assets" / "shakespeare.txt").read_text()[:60_000]
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
BLOCK = 96


class SlowDecoder(DecoderLM):
    """A DecoderLM whose forward can be slowed down, so requests stay in flight long enough to disconnect,
    overflow the queue or shut down under them (no timing is asserted)."""

    delay = 0.0

    def forward(self, *args, **kwargs):
        if self.delay:
            time.sleep(self.delay)
        return super().forward(*args, **kwargs)


def chat_tokenizer():
    tok = train_bpe([TEXT], 400, special_tokens=("<|endoftext|>", "<|im_start|>", "<|im_end|>"))
    tok.chat_template = CHATML
    return tok


def tiny_decoder(vocab_size: int, cls: type = DecoderLM, block_size: int = BLOCK) -> DecoderLM:
    torch.manual_seed(0)
    cfg = preset("llama-tiny", vocab_size=vocab_size, n_layer=2, d_model=32, n_head=4, n_kv_head=2, d_ff=48,
                 block_size=block_size)
    return cls(cfg).eval()


def tiny_encoder():
    tok = train_wordpiece([TEXT], 600)
    torch.manual_seed(1)
    model = EncoderForPreTraining(preset("bert-tiny", vocab_size=tok.vocab_size, n_layer=1, d_model=32, n_head=2,
                                         d_ff=48, block_size=64)).eval()
    return model, tok


def perturbed(model, seed: int):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in P.trainable_parameters(model).values():
            p.add_(0.5 * torch.randn(p.shape, generator=g))
    return model


def save_assets(root: Path) -> dict[str, Path]:
    """A decoder checkpoint, two LoRA adapters, one soft prompt and an encoder checkpoint under root."""
    tok = chat_tokenizer()
    base = tiny_decoder(tok.vocab_size)
    paths = {"model": save_checkpoint(root / "model", base, tokenizer=tok)}
    for i, name in enumerate(("lora-a", "lora-b")):
        lora = P.inject(copy.deepcopy(base), P.LoraConfig(r=4, alpha=8, target_modules=["q_proj", "v_proj"]), name)
        paths[name] = P.save_adapter(perturbed(lora, 10 + i), root / name)
    prompt = P.inject(copy.deepcopy(base), P.PromptTuningConfig(n_virtual_tokens=4), "soft")
    paths["soft"] = P.save_adapter(perturbed(prompt, 20), root / "soft")
    encoder, etok = tiny_encoder()
    paths["encoder"] = save_checkpoint(root / "encoder", encoder, tokenizer=etok)
    return paths


@contextlib.contextmanager
def running_server(app) -> Iterator[tuple[uvicorn.Server, str]]:
    """(server, base URL of /v1) for an app served by uvicorn in a thread; stopped and joined on exit."""
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", timeout_graceful_shutdown=20)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        for _ in range(400):
            if server.started or not thread.is_alive():
                break
            time.sleep(0.025)
        assert server.started, "uvicorn did not start"
        port = server.servers[0].sockets[0].getsockname()[1]
        yield server, f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)
        assert not thread.is_alive(), "the server thread did not stop"
