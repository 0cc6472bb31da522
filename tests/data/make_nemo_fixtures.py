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
- tests/data/nemo/tiny_tdt_ms2 / tiny_tdt_ms3 / tiny_tdt_ctc (.nemo, .json, _tensors.npz): models whose
  configs carry the options real checkpoints use (see VARIANTS): small max_symbols with wide durations
  (the label-looping max-symbols guard fires; its duration-0 logit is tilted after training so it does
  often), pad_to 16, 64/80 mel bins, xscaling off, use_bias off, layer_norm convolution norm, striding
  subsampling, tied biases, one-layer prediction network, non-default windows/normalisation, and a hybrid
  TDT-CTC model. Their JSON holds NeMo's `transcribe()` output with strategy greedy_batch (bs1) and
  strategy greedy (greedy_bs1).
- tests/data/nemo/features.npz: AudioToMelSpectrogramPreprocessor outputs for every option set in
  FEATURE_CASES (three clips of different lengths in one batch).
- tests/data/nemo/confidence.json: token and word confidences of CONFIDENCE_MODELS for every
  confidence_cfg in confidence_cases() (NeMo's transcribe, greedy_batch, batch size 1).

Only what is missing is built; `--only NAME [NAME ...]` rebuilds the named fixtures (audio, tiny_tdt,
tiny_tdt_ff2, loss, features, confidence, or a VARIANTS name). Rebuilding the audio changes every other fixture.
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


def model_config(tok_dir: Path, d_model: int, ff: int, attn: str = "rel_pos", ctx=(-1, -1),
                 durations=(0, 1, 2, 3, 4), max_symbols: int = 10, preprocessor: dict | None = None,
                 encoder: dict | None = None, prednet: dict | None = None, hybrid: bool = False) -> dict:
    durations = list(durations)
    cfg = {
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
        "decoding": {"strategy": "greedy_batch", "model_type": "tdt", "durations": durations, "greedy": {"max_symbols": max_symbols}},
        "optim": None,
    }
    cfg["preprocessor"].update(preprocessor or {})
    cfg["encoder"].update(encoder or {})
    cfg["encoder"]["feat_in"] = cfg["preprocessor"]["features"] * int(cfg["preprocessor"].get("frame_splicing", 1))
    cfg["decoder"]["prednet"].update(prednet or {})
    if hybrid:  # EncDecHybridRNNTCTCBPEModel: a CTC head on the same encoder (its decoder is ConvASRDecoder)
        cfg["aux_ctc"] = {
            "ctc_loss_weight": 0.3, "use_cer": False, "ctc_reduction": "mean_batch",
            "decoder": {"_target_": "nemo.collections.asr.modules.ConvASRDecoder", "feat_in": d_model,
                        "num_classes": -1, "vocabulary": []},
            "decoding": {"strategy": "greedy_batch"},
        }
    return cfg


# Tiny models whose configs carry the options published checkpoints use. Each entry:
# (d_model, ff, durations, max_symbols, preprocessor overrides, encoder overrides, prednet overrides,
#  hybrid, (duration-0 tilt, blank tilt)). The tilts are added to the duration-0 and blank output biases
# after training, so that zero-duration label chains (and with them the max-symbols guard, and the cases
# where strategies greedy and greedy_batch disagree) are common; they are part of the weights both NeMo
# and we load. (The trained logits are large: tilts of a few units change nothing.)
VARIANTS = {
    "tiny_tdt_ms2": (48, 4, (0, 1, 2, 3, 4, 5, 6, 7, 8), 2,
                     {"features": 80, "pad_to": 16, "window": "hamming"},
                     {"xscaling": False, "use_bias": False, "conv_norm_type": "layer_norm"},
                     {"pred_rnn_layers": 1}, False, (10.0, 0.0)),
    "tiny_tdt_ms3": (48, 4, (0, 1, 2, 4, 8), 3,
                     {"features": 64, "pad_to": 16, "normalize": "all_features", "mag_power": 1.0,
                      "lowfreq": 60, "highfreq": 7600, "log_zero_guard_type": "clamp", "log_zero_guard_value": 1e-5},
                     {"subsampling": "striding", "untie_biases": False, "att_context_size": [[-1, -1]]},
                     {}, False, (19.5, -12.0)),
    "tiny_tdt_ctc": (48, 4, (0, 1, 2, 3, 4), 10,
                     {"features": 80, "pad_to": 16, "window": "blackman", "window_size": 0.02, "n_fft": 512},
                     {}, {"pred_rnn_layers": 1}, True, (0.0, 0.0)),
}

# AudioToMelSpectrogramPreprocessor option sets compared feature by feature (tests/model/test_features.py).
FEATURE_CASES = {
    "nemo_defaults": {},  # window_size 0.02, 64 mels, pad_to 16: what a config without these keys means
    "parakeet": {"window_size": 0.025, "features": 128, "pad_to": 0, "n_fft": 512},
    "pad_to16_value": {"window_size": 0.025, "features": 80, "pad_to": 16, "pad_value": -3.0},
    "all_features": {"window_size": 0.025, "features": 80, "normalize": "all_features"},
    "no_normalize": {"window_size": 0.025, "features": 80, "normalize": "NA"},
    "no_log": {"window_size": 0.025, "features": 80, "log": False, "normalize": "NA"},
    "clamp_guard": {"window_size": 0.025, "features": 80, "log_zero_guard_type": "clamp", "log_zero_guard_value": 1e-6},
    "guard_tiny": {"window_size": 0.025, "features": 80, "log_zero_guard_value": "tiny"},
    "guard_eps": {"window_size": 0.025, "features": 80, "log_zero_guard_type": "clamp", "log_zero_guard_value": "eps"},
    "mag_power1": {"window_size": 0.025, "features": 80, "mag_power": 1.0},
    "hamming": {"window_size": 0.025, "features": 80, "window": "hamming"},
    "blackman": {"window_size": 0.025, "features": 80, "window": "blackman"},
    "bartlett": {"window_size": 0.025, "features": 80, "window": "bartlett"},
    "n_fft_1024": {"window_size": 0.025, "features": 80, "n_fft": 1024},
    "derived_n_fft": {"window_size": 0.035, "window_stride": 0.015, "features": 80},
    "n_window_keys": {"window_size": None, "window_stride": None, "n_window_size": 400, "n_window_stride": 160, "features": 80},
    "freq_range": {"window_size": 0.025, "features": 80, "lowfreq": 100, "highfreq": 6000},
    "exact_pad": {"window_size": 0.025, "features": 80, "exact_pad": True},
    "frame_splicing3": {"window_size": 0.025, "features": 64, "frame_splicing": 3},
    "no_preemph": {"window_size": 0.025, "features": 128, "preemph": None},
    "mel_norm_none": {"window_size": 0.025, "features": 80, "mel_norm": None},
    "rate_8k": {"sample_rate": 8000, "window_size": 0.025, "features": 64},
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
    durations = [int(d) for d in model.cfg.model_defaults.tdt_durations]
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


def tilt_logits(model, duration0: float, blank: float) -> None:
    """Add to the duration-0 and blank logits' biases of the joint's output layer (see VARIANTS)."""
    durations = [int(d) for d in model.cfg.model_defaults.tdt_durations]
    head = [m for m in model.joint.joint_net if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():
        head.bias[head.bias.shape[0] - len(durations) + durations.index(0)] += duration0
        head.bias[model.decoder.blank_idx] += blank


def guard_firings(hyps: list[dict], max_symbols: int) -> int:
    """Frames where label looping's max-symbols guard forced time on: max_symbols labels at one frame,
    the last with duration 0 (it did not move time itself)."""
    fired = 0
    for h in hyps:
        i, ts, du = 0, h["timestep"], h["token_duration"]
        while i < len(ts):
            j = i
            while j + 1 < len(ts) and ts[j + 1] == ts[i]:
                j += 1
            fired += (j - i + 1) >= max_symbols and du[j] == 0
            i = j + 1
    return fired


def references(model, name: str, rows, clips, strategies=("greedy_batch",)) -> None:
    # NeMo is given the decoded 16 kHz mono arrays (its file reader rejects stereo); they are what
    # model.audio.decode_audio yields for the same files (soundfile float32, channel mean, soxr HQ).
    from omegaconf import open_dict

    out = {"clips": [r["audio"] for r in rows]}
    for bs in (1, 4):
        hyps = model.transcribe(list(clips), batch_size=bs, timestamps=True, verbose=False)
        out[f"bs{bs}"] = [hyp_json(h) for h in hyps]
    if "greedy" in strategies:  # GreedyTDTInfer: the per-utterance frame loop (strategy `greedy`)
        cfg = model.cfg.decoding.copy()
        with open_dict(cfg):
            cfg.strategy = "greedy"
        model.change_decoding_strategy(cfg, verbose=False)
        hyps = model.transcribe(list(clips), batch_size=1, timestamps=True, verbose=False)
        out["greedy_bs1"] = [hyp_json(h) for h in hyps]
        with open_dict(cfg):
            cfg.strategy = "greedy_batch"
        model.change_decoding_strategy(cfg, verbose=False)
    max_symbols = int(model.cfg.decoding.greedy.max_symbols)
    out["max_symbols"] = max_symbols
    out["guard_firings_bs1"] = guard_firings(out["bs1"], max_symbols)
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
    print(f"  {name}: tokens/clip {n_tok}, duration histogram {durs.tolist()}, bs4 != bs1 durations on {mism} clips,"
          f" guard fired {out['guard_firings_bs1']} times")
    if "greedy_bs1" in out:
        diff = sum(a["y_sequence"] != b["y_sequence"] or a["token_duration"] != b["token_duration"]
                   for a, b in zip(out["bs1"], out["greedy_bs1"]))
        print(f"  {name}: strategy greedy differs from greedy_batch on {diff} clips")
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


def feature_fixtures(clips) -> None:
    """NeMo's preprocessor on a 3-clip batch, per option set in FEATURE_CASES (eval mode: no dither)."""
    import soxr
    from nemo.collections.asr.modules import AudioToMelSpectrogramPreprocessor

    picks = [clips[0][:30000], clips[3][:20000], clips[5][:12500]]  # three lengths (small fixture)
    out = {}
    for rate in (16000, 8000):
        xs = picks if rate == 16000 else [soxr.resample(c, 16000, 8000, quality="HQ").astype(np.float32) for c in picks]
        lengths = torch.tensor([len(x) for x in xs])
        audio = torch.zeros(len(xs), int(lengths.max()))
        for i, x in enumerate(xs):
            audio[i, : len(x)] = torch.from_numpy(x)
        out[f"audio_{rate}"], out[f"lengths_{rate}"] = audio.numpy(), lengths.numpy()
    for name, opts in FEATURE_CASES.items():
        opts = {"dither": 1e-5, **opts}
        rate = int(opts.get("sample_rate", 16000))
        pre = AudioToMelSpectrogramPreprocessor(**opts).eval()
        with torch.no_grad():
            feats, flen = pre(input_signal=torch.from_numpy(out[f"audio_{rate}"]), length=torch.from_numpy(out[f"lengths_{rate}"]))
        out[f"{name}_features"], out[f"{name}_lengths"] = feats.numpy(), flen.numpy()
        print(f"  features {name}: {tuple(feats.shape)}")
    (OUT / "features_cases.json").write_text(json.dumps(FEATURE_CASES, indent=1))
    np.savez_compressed(OUT / "features.npz", **out)


# confidence_cfg cases (tests/model/test_confidence.py): every frame measure (max_prob; gibbs / tsallis /
# renyi entropies at two alphas, lin and exp), every aggregation, TDT duration confidence on and off,
# blanks excluded and included.
CONFIDENCE_MODELS = ("tiny_tdt", "tiny_tdt_ms2")


def confidence_cases() -> dict[str, dict]:
    methods = {"max_prob_a1": {"name": "max_prob", "alpha": 1.0}, "max_prob_a05": {"name": "max_prob", "alpha": 0.5}}
    for kind in ("gibbs", "tsallis", "renyi"):
        for alpha in (0.33, 1.0):
            for norm in ("lin", "exp"):
                methods[f"{kind}_{norm}_a{alpha}"] = {"name": "entropy", "entropy_type": kind, "alpha": alpha, "entropy_norm": norm}
    cases = {}
    for mname, method in methods.items():
        for exclude in (True, False):
            for dur in (False, True):
                cases[f"{mname}|min|excl{int(exclude)}|dur{int(dur)}"] = dict(
                    method_cfg=method, aggregation="min", exclude_blank=exclude, tdt_include_duration=dur)
    for agg in ("mean", "max", "prod"):
        for exclude in (True, False):
            cases[f"tsallis_exp_a0.33|{agg}|excl{int(exclude)}|dur1"] = dict(
                method_cfg=methods["tsallis_exp_a0.33"], aggregation=agg, exclude_blank=exclude, tdt_include_duration=True)
    return cases


def confidence_fixtures(clips) -> None:
    """NeMo's token and word confidences (`transcribe(..., return_hypotheses=True)` with `confidence_cfg`,
    strategy greedy_batch, batch size 1) for every case of confidence_cases()."""
    from nemo.collections.asr.models import ASRModel
    from omegaconf import OmegaConf, open_dict

    out = {"cases": confidence_cases()}
    for name in CONFIDENCE_MODELS:
        model = ASRModel.restore_from(str(OUT / f"{name}.nemo"), map_location="cpu").eval()
        results = {}
        for key, case in out["cases"].items():
            cfg = model.cfg.decoding.copy()
            with open_dict(cfg):
                cfg.confidence_cfg = OmegaConf.create({**case, "preserve_frame_confidence": True,
                                                       "preserve_token_confidence": True, "preserve_word_confidence": True})
                # NeMo 3.0's TDT token confidence with blanks included walks hyp.alignments
                cfg.preserve_alignments = not case["exclude_blank"]
            model.change_decoding_strategy(cfg, verbose=False)
            hyps = model.transcribe(list(clips), batch_size=1, return_hypotheses=True, verbose=False)
            model.eval()
            results[key] = [{"y_sequence": [int(x) for x in h.y_sequence.tolist()], "words": list(h.words or []),
                             "token_confidence": [float(c) for c in h.token_confidence],
                             "word_confidence": [float(c) for c in h.word_confidence]} for h in hyps]
        out[name] = results
        print(f"  confidence {name}: {len(results)} cases", flush=True)
    (OUT / "confidence.json").write_text(json.dumps(out))


def build_variant(nemo_asr, tok_dir: Path, name: str, rows, clips, texts) -> None:
    from omegaconf import OmegaConf, open_dict

    d_model, ff, durations, max_symbols, pre, enc, pred, hybrid, tilt = VARIANTS[name]
    print(f"building {name}", flush=True)
    torch.manual_seed(1)
    cfg = OmegaConf.create(model_config(tok_dir, d_model, ff, durations=durations, max_symbols=max_symbols,
                                        preprocessor=pre, encoder=enc, prednet=pred, hybrid=hybrid))
    cls = nemo_asr.models.EncDecHybridRNNTCTCBPEModel if hybrid else nemo_asr.models.EncDecRNNTBPEModel
    model = cls(cfg=cfg)
    with open_dict(model.cfg):
        model.cfg.validation_ds = {"use_start_end_token": False}
    train(model, clips, texts, 250, seed=2)
    tilt_logits(model, *tilt)
    model.save_to(str(OUT / f"{name}.nemo"))
    references(model, name, rows, clips, strategies=("greedy_batch", "greedy"))


def main() -> None:
    import argparse

    import nemo.collections.asr as nemo_asr
    from omegaconf import OmegaConf, open_dict

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", default=None, help="rebuild these fixtures (default: whatever is missing)")
    args = parser.parse_args()
    want = lambda name, path: (name in args.only) if args.only else not path.exists()  # noqa: E731

    torch.manual_seed(0)
    OUT.mkdir(parents=True, exist_ok=True)
    if want("audio", AUDIO / "manifest.jsonl"):
        make_audio()
    rows = [json.loads(line) for line in (AUDIO / "manifest.jsonl").read_text().splitlines()]
    clips = load_clips(rows)
    texts = [r["text"] for r in rows]
    with tempfile.TemporaryDirectory() as tmp:
        tok_dir = train_tokenizer(texts + [c[3] for c in CLIPS], Path(tmp) / "tok")
        for name, d_model, ff, steps in (("tiny_tdt", 64, 4, 250), ("tiny_tdt_ff2", 48, 2, 250)):
            if not want(name, OUT / f"{name}.nemo"):
                continue
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
        for name in VARIANTS:
            if want(name, OUT / f"{name}.nemo"):
                build_variant(nemo_asr, tok_dir, name, rows, clips, texts)
    if want("loss", OUT / "tdt_loss.npz"):
        loss_fixtures()
    if want("features", OUT / "features.npz"):
        feature_fixtures(clips)
    if want("confidence", OUT / "confidence.json"):
        confidence_fixtures(clips)


if __name__ == "__main__":
    sys.exit(main())
