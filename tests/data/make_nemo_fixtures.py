"""Build the NeMo 3.0 reference fixtures under tests/data/ (run rarely; outputs are committed).

    python3 -m venv /opt/nemo && /opt/nemo/bin/pip install torch==2.13.0 "nemo-toolkit[asr]==3.0.0"
    apt-get install espeak-ng sox
    /opt/nemo/bin/python tests/data/make_nemo_fixtures.py

What it makes (deterministic seeds; a few MB in all):
- tests/data/audio/*.wav|flac: sentences spoken by espeak-ng (several voices and speeds; one
  44.1 kHz stereo WAV and one FLAC to exercise resampling and downmixing), manifest.jsonl.
- tests/data/nemo/tiny_tdt.nemo, tiny_tdt_ff2.nemo, tiny_tdt_local.nemo: tiny Parakeet-TDT-shaped
  models built with NeMo's own EncDecRNNTBPEModel, briefly trained on the clips with NeMo's TDT loss
  so they emit real tokens (words, punctuation, durations 0..4) rather than random noise.
- tests/data/nemo/<model>.json: NeMo's `transcribe(..., timestamps=True)` output per clip, with
  batch_size=1 (the reference) and batch_size=4 (greedy_batch label looping on CPU).
- tests/data/nemo/<model>_tensors.npz: preprocessor features and encoder outputs for two clips.
- tests/data/nemo/tdt_loss.npz: NeMo's TDTLossPytorch values and gradients on random lattices.
"""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
AUDIO = HERE / "audio"
OUT = HERE / "nemo"

CLIPS = [  # (name, voice, words per minute, text)
    ("hello", "en-us", 160, "Hello world, this is a test."),
    ("fox", "en-gb", 150, "The quick brown fox jumps over the lazy dog."),
    ("howare", "en-us+f3", 170, "How are you today? I am fine, thank you!"),
    ("ships", "en-us+m3", 140, "Seven ships sailed east at dawn. Nobody saw them go!"),
    ("cant", "en-gb+f2", 175, "It's late; we can't stay, can we?"),
    ("shard", "en-us", 185, "We transcribe audio, one shard at a time."),
]
STEREO_CLIP = ("stereo44k", "en-gb", 160, "Is this the real life? Is this just fantasy?")
FLAC_CLIP = ("flacclip", "en-us+f4", 160, "Numbers like forty two are spoken.")


def speak(name: str, voice: str, wpm: int, text: str, dest: Path) -> None:
    subprocess.run(["espeak-ng", "-v", voice, "-s", str(wpm), "-w", str(dest), text], check=True)


def make_audio() -> list[dict]:
    AUDIO.mkdir(parents=True, exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, voice, wpm, text in CLIPS + [STEREO_CLIP, FLAC_CLIP]:
            raw = Path(tmp) / f"{name}.wav"
            speak(name, voice, wpm, text, raw)
            if name == "stereo44k":
                dest = AUDIO / f"{name}.wav"
                subprocess.run(["sox", str(raw), "-r", "44100", "-c", "2", str(dest)], check=True)
            elif name == "flacclip":
                dest = AUDIO / f"{name}.flac"
                subprocess.run(["sox", str(raw), "-r", "16000", "-c", "1", str(dest)], check=True)
            else:
                dest = AUDIO / f"{name}.wav"
                subprocess.run(["sox", str(raw), "-r", "16000", "-c", "1", "-b", "16", str(dest)], check=True)
            rows.append({"audio": dest.name, "text": text})
    (AUDIO / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


def train_tokenizer(texts: list[str], folder: Path) -> Path:
    import sentencepiece as spm

    folder.mkdir(parents=True, exist_ok=True)
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts * 8), model_prefix=str(folder / "tokenizer"), vocab_size=72, model_type="bpe",
        character_coverage=1.0, bos_id=-1, eos_id=-1, unk_id=0, num_threads=1, minloglevel=2,
    )
    sp = spm.SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))
    (folder / "vocab.txt").write_text("".join(sp.id_to_piece(i) + "\n" for i in range(sp.get_piece_size())))
    return folder


def model_config(tok_dir: Path, d_model: int, ff: int, attn: str = "rel_pos", ctx=(-1, -1)) -> dict:
    durations = [0, 1, 2, 3, 4]
    return {
        "sample_rate": 16000,
        "tokenizer": {"dir": str(tok_dir), "type": "bpe"},
        "preprocessor": {
            "_target_": "nemo.collections.asr.modules.AudioToMelSpectrogramPreprocessor",
            "sample_rate": 16000, "normalize": "per_feature", "window_size": 0.025, "window_stride": 0.01,
            "window": "hann", "features": 128, "n_fft": 512, "log": True, "frame_splicing": 1,
            "dither": 1e-05, "pad_to": 0, "pad_value": 0.0,
        },
        "encoder": {
            "_target_": "nemo.collections.asr.modules.ConformerEncoder",
            "feat_in": 128, "feat_out": -1, "n_layers": 2, "d_model": d_model,
            "subsampling": "dw_striding", "subsampling_factor": 8, "subsampling_conv_channels": 32,
            "causal_downsampling": False, "ff_expansion_factor": ff, "self_attention_model": attn,
            "n_heads": 4, "att_context_size": list(ctx), "xscaling": True, "untie_biases": True,
            "pos_emb_max_len": 5000, "conv_kernel_size": 9, "conv_norm_type": "batch_norm",
            "dropout": 0.0, "dropout_pre_encoder": 0.0, "dropout_emb": 0.0, "dropout_att": 0.0,
            "use_bias": True,
        },
        "decoder": {
            "_target_": "nemo.collections.asr.modules.RNNTDecoder", "normalization_mode": None,
            "random_state_sampling": False, "blank_as_pad": True,
            "prednet": {"pred_hidden": 64, "pred_rnn_layers": 2, "t_max": None, "dropout": 0.0},
        },
        "joint": {
            "_target_": "nemo.collections.asr.modules.RNNTJoint", "log_softmax": None, "preserve_memory": False,
            "fuse_loss_wer": False, "fused_batch_size": 4, "num_extra_outputs": len(durations),
            "jointnet": {"joint_hidden": 64, "activation": "relu", "dropout": 0.0},
        },
        "model_defaults": {"tdt_durations": durations, "num_tdt_durations": len(durations), "enc_hidden": d_model, "pred_hidden": 64, "joint_hidden": 64},
        "loss": {"loss_name": "tdt", "tdt_kwargs": {"fastemit_lambda": 0.0, "clamp": -1.0, "durations": durations, "sigma": 0.02, "omega": 0.1}},
        "decoding": {"strategy": "greedy_batch", "model_type": "tdt", "durations": durations, "greedy": {"max_symbols": 10}},
        "optim": None,
    }


@contextlib.contextmanager
def cpu_cuda():
    """NeMo 3.0's TDTLossPytorch calls `log_alpha.cuda()` unconditionally; on a CPU-only machine make
    `.cuda()` a no-op while it runs (the math is device-independent)."""
    saved = torch.Tensor.cuda
    torch.Tensor.cuda = lambda self, *a, **k: self
    try:
        yield
    finally:
        torch.Tensor.cuda = saved


def load_clips(rows):
    import soundfile as sf
    import soxr

    out = []
    for r in rows:
        x, sr = sf.read(AUDIO / r["audio"], dtype="float32", always_2d=True)
        x = x.mean(1)
        if sr != 16000:
            x = soxr.resample(x, sr, 16000, quality="HQ")
        out.append(x.astype(np.float32))
    return out


def train(model, clips, texts, steps: int, seed: int):
    # NeMo's own TDT losses are CUDA-only (numba) or a per-cell Python loop (TDTLossPytorch, hours
    # here); transformers' vectorised port of the same loss trains these tiny models in a minute.
    from transformers.loss.loss_tdt import tdt_loss

    torch.manual_seed(seed)
    durations = [0, 1, 2, 3, 4]
    blank = model.decoder.blank_idx
    lengths = torch.tensor([len(c) for c in clips])
    audio = torch.zeros(len(clips), int(lengths.max()))
    for i, c in enumerate(clips):
        audio[i, : len(c)] = torch.from_numpy(c)
    targets = [model.tokenizer.text_to_ids(t) for t in texts]
    tlen = torch.tensor([len(t) for t in targets])
    tgt = torch.full((len(targets), int(tlen.max())), blank, dtype=torch.long)
    for i, t in enumerate(targets):
        tgt[i, : len(t)] = torch.tensor(t)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for step in range(steps):
        enc, enc_len = model.forward(input_signal=audio, input_signal_length=lengths)
        dec, _, _ = model.decoder(targets=tgt, target_length=tlen)
        logits = model.joint(encoder_outputs=enc, decoder_outputs=dec)
        loss = tdt_loss(logits[..., : blank + 1], logits[..., blank + 1 :], tgt, enc_len, tlen, blank, durations, sigma=0.02)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 25 == 0 or step == steps - 1:
            print(f"  step {step:4d} loss {loss.item():.3f}", flush=True)
    model.eval()


def hyp_json(h) -> dict:
    ts = h.timestamp if isinstance(h.timestamp, dict) else {}
    conv = lambda items, key: [  # noqa: E731
        {key: it[key], "start_offset": int(it["start_offset"]), "end_offset": int(it["end_offset"]),
         "start": float(it["start"]), "end": float(it["end"])} for it in items
    ]
    return {
        "text": h.text,
        "y_sequence": [int(x) for x in (h.y_sequence.tolist() if torch.is_tensor(h.y_sequence) else h.y_sequence)],
        "timestep": [int(x) for x in ts.get("timestep", [])],
        "token_duration": [int(x) for x in (h.token_duration.tolist() if torch.is_tensor(h.token_duration) else (h.token_duration or []))],
        "char": [dict(c, char=c["char"][0] if isinstance(c["char"], list) else c["char"]) for c in conv(ts.get("char", []), "char")],
        "word": conv(ts.get("word", []), "word"),
        "segment": conv(ts.get("segment", []), "segment"),
    }


def references(model, name: str, rows, clips) -> None:
    # NeMo is given the decoded 16 kHz mono arrays (its file reader rejects stereo); they are what
    # model.audio.decode_audio yields for the same files (soundfile float32, channel mean, soxr HQ).
    out = {"clips": [r["audio"] for r in rows]}
    for bs in (1, 4):
        hyps = model.transcribe(list(clips), batch_size=bs, timestamps=True, verbose=False)
        out[f"bs{bs}"] = [hyp_json(h) for h in hyps]
    (OUT / f"{name}.json").write_text(json.dumps(out, indent=1))
    # NeMo 3.0's transcribe() leaves the encoder in training mode afterwards (BatchNorm would use
    # batch statistics and update its running stats): put the whole model back in eval mode.
    model.eval()
    tensors = {}
    with torch.no_grad():
        for i in range(2):
            x = torch.from_numpy(clips[i])[None]
            n = torch.tensor([x.shape[1]])
            feats, flen = model.preprocessor(input_signal=x, length=n)
            enc, elen = model.encoder(audio_signal=feats, length=flen)
            tensors[f"audio_{i}"] = clips[i]
            tensors[f"features_{i}"] = feats[0].numpy()
            tensors[f"feature_len_{i}"] = flen.numpy()
            tensors[f"encoded_{i}"] = enc[0].transpose(0, 1).numpy()  # (T, D)
            tensors[f"encoded_len_{i}"] = elen.numpy()
    np.savez_compressed(OUT / f"{name}_tensors.npz", **tensors)
    n_tok = [len(h["y_sequence"]) for h in out["bs1"]]
    durs = np.bincount([d for h in out["bs1"] for d in h["token_duration"]], minlength=5)
    mism = sum(a["token_duration"] != b["token_duration"] for a, b in zip(out["bs1"], out["bs4"]))
    print(f"  {name}: tokens/clip {n_tok}, duration histogram {durs.tolist()}, bs4 != bs1 durations on {mism} clips")
    for h in out["bs1"][:3]:
        print("   ", repr(h["text"]))


def loss_fixtures() -> None:
    from nemo.collections.asr.losses.rnnt_pytorch import TDTLossPytorch

    g = torch.Generator().manual_seed(0)
    cases = {}
    for ci, (b, t, u, v, durations, sigma) in enumerate(
        [(2, 6, 3, 5, [0, 1, 2, 3, 4], 0.0), (3, 8, 4, 7, [0, 1, 2, 3, 4], 0.05), (2, 7, 2, 4, [0, 1, 2], 0.02), (1, 5, 3, 6, [1, 2, 4], 0.0)]
    ):
        acts = torch.randn(b, t, u + 1, v + 1 + len(durations), generator=g, dtype=torch.float64, requires_grad=True)
        labels = torch.randint(0, v, (b, u), generator=g)
        act_lens = torch.tensor([t - i for i in range(b)])
        label_lens = torch.tensor([u - (i % 2) for i in range(b)])
        loss_fn = TDTLossPytorch(blank=v, durations=durations, reduction="none", sigma=sigma)
        with cpu_cuda():
            per = loss_fn(acts=acts, labels=labels, act_lens=act_lens, label_lens=label_lens)
        per.sum().backward()
        for k, val in dict(acts=acts.detach(), labels=labels, act_lens=act_lens, label_lens=label_lens,
                           loss=per.detach(), grad=acts.grad, durations=torch.tensor(durations),
                           sigma=torch.tensor(sigma), blank=torch.tensor(v)).items():
            cases[f"case{ci}_{k}"] = val.numpy()
    np.savez_compressed(OUT / "tdt_loss.npz", **cases)
    print("  tdt_loss.npz:", len(cases) // 9, "cases")


def main() -> None:
    import nemo.collections.asr as nemo_asr
    from omegaconf import OmegaConf, open_dict

    torch.manual_seed(0)
    OUT.mkdir(parents=True, exist_ok=True)
    rows = make_audio()
    clips = load_clips(rows)
    texts = [r["text"] for r in rows]
    with tempfile.TemporaryDirectory() as tmp:
        tok_dir = train_tokenizer(texts + [c[3] for c in CLIPS], Path(tmp) / "tok")
        for name, d_model, ff, steps in (("tiny_tdt", 64, 4, 250), ("tiny_tdt_ff2", 48, 2, 250)):
            print(f"building {name}", flush=True)
            torch.manual_seed(1)
            model = nemo_asr.models.EncDecRNNTBPEModel(cfg=OmegaConf.create(model_config(tok_dir, d_model, ff)))
            with open_dict(model.cfg):  # transcribe() reads this from the (absent) validation config
                model.cfg.validation_ds = {"use_start_end_token": False}
            train(model, clips, texts, steps, seed=2)
            model.save_to(str(OUT / f"{name}.nemo"))
            references(model, name, rows, clips)
            if name == "tiny_tdt":  # same weights, limited-context attention (NeMo's long-audio mode)
                model.change_attention_model("rel_pos_local_attn", [8, 8])
                model.save_to(str(OUT / "tiny_tdt_local.nemo"))
                references(model, "tiny_tdt_local", rows, clips)
    loss_fixtures()


if __name__ == "__main__":
    sys.exit(main())
