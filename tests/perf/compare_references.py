"""Side by side, one run, identical weights: our model vs NeMo's `transcribe` (greedy_batch) vs
transformers' `ParakeetForTDT.generate()`. Run in a venv that has NeMo 3.0 and transformers:

    /opt/nemo/bin/python tests/perf/compare_references.py --nemo tests/data/nemo/tiny_tdt.nemo
    /opt/nemo/bin/python tests/perf/compare_references.py --shape parakeet-tdt-0.6b-v3 --batch-sizes 1,16

With --shape, a NeMo model of that architecture is built with random weights (seeded; same compute as
a trained one) and saved as .nemo; its blank bias is calibrated as `parakeet-ray bench` does (about 0.4
tokens per frame, like trained Parakeet) and given to all three (ours reads the .nemo, NeMo gets the
bias, transformers reads the folder ours saves). Prints end-to-end RTFx per batch size and the decoding-only time
given the same encoder output, with ratios, and writes JSON.

--precisions fp32,bf16 adds a bf16 row per batch size: ours with bf16 weights (features stay fp32), NeMo's
transcribe and decoding under torch.autocast("cpu", bfloat16) (NeMo's own mixed-precision path), and
transformers with bf16 weights; the fp32 rows are the parity setting (outputs equal NeMo's).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "data"))


def best_of(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def build_nemo(shape: str, folder: str) -> str:
    """A random-weight NeMo TDT model of a preset's architecture, saved as .nemo; returns the path."""
    import nemo.collections.asr as nemo_asr
    import sentencepiece as spm
    from make_nemo_fixtures import model_config
    from omegaconf import OmegaConf, open_dict

    from model.config import preset

    cfg = preset(shape)
    words = [f"w{i:05d}" for i in range(20000)]
    spm.SentencePieceTrainer.train(sentence_iterator=iter([" ".join(words[i:i + 20]) for i in range(0, 20000, 20)]),
                                   model_prefix=f"{folder}/tokenizer", vocab_size=cfg.vocab_size, model_type="bpe",
                                   bos_id=-1, eos_id=-1, unk_id=0, minloglevel=2, hard_vocab_limit=False)
    sp = spm.SentencePieceProcessor(model_file=f"{folder}/tokenizer.model")
    with open(f"{folder}/vocab.txt", "w") as f:
        f.writelines(sp.id_to_piece(i) + "\n" for i in range(sp.get_piece_size()))
    e = cfg.encoder
    conf = model_config(folder, e.d_model, e.ff_expansion_factor)
    conf["encoder"].update(n_layers=e.n_layers, n_heads=e.n_heads, subsampling_conv_channels=e.subsampling_conv_channels,
                           use_bias=e.attention_bias, feat_in=cfg.features.n_mels)
    conf["preprocessor"]["features"] = cfg.features.n_mels
    conf["decoder"]["prednet"]["pred_hidden"] = cfg.predictor.pred_hidden
    conf["joint"]["jointnet"]["joint_hidden"] = cfg.joint.joint_hidden
    conf["model_defaults"].update(enc_hidden=e.d_model, pred_hidden=cfg.predictor.pred_hidden, joint_hidden=cfg.joint.joint_hidden)
    torch.manual_seed(0)  # the same random model every run
    m = nemo_asr.models.EncDecRNNTBPEModel(cfg=OmegaConf.create(conf))
    with open_dict(m.cfg):
        m.cfg.validation_ds = {"use_start_end_token": False}
    path = f"{folder}/model.nemo"
    m.save_to(path)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--nemo", help="a .nemo TDT checkpoint")
    src.add_argument("--shape", help="a preset architecture with random weights, e.g. parakeet-tdt-0.6b-v3")
    ap.add_argument("--batch-sizes", default="1,4,16")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--precisions", default="fp32", help="comma-separated: fp32 and/or bf16")
    ap.add_argument("--json", default="compare_references.json")
    args = ap.parse_args()

    import nemo.collections.asr as nemo_asr
    import transformers
    from omegaconf import open_dict

    import model
    from jobs.bench import synthetic_audio
    from model.decoding import greedy_tdt

    tmp = tempfile.mkdtemp(prefix="compare-")
    nemo_path = args.nemo or build_nemo(args.shape, tmp)
    nm = nemo_asr.models.EncDecRNNTBPEModel.restore_from(nemo_path, map_location="cpu").eval()
    with open_dict(nm.cfg):
        nm.cfg.validation_ds = nm.cfg.get("validation_ds") or {"use_start_end_token": False}
    ours32 = model.load(nemo_path)
    if args.shape:  # random joints emit a token at almost every step (or never): calibrate the blank bias
        from jobs.bench import _realistic_emissions  # to ~0.4 tokens per frame, then give NeMo the same bias

        _realistic_emissions(ours32)
        # A constant shift of the duration logits changes no decision of ours or NeMo's, and keeps them below
        # the token logits, where transformers' generate() (one argmax over both) would pick one and crash.
        with torch.no_grad():
            ours32.joint.head.bias[ours32.config.blank_id + 1 :] -= 30.0
        head = [mod for mod in nm.joint.joint_net if isinstance(mod, torch.nn.Linear)][-1]
        with torch.no_grad():
            head.bias.copy_(ours32.joint.head.bias)
    model.save(ours32, f"{tmp}/hf")
    hf32 = transformers.ParakeetForTDT.from_pretrained(f"{tmp}/hf").eval()
    fe = transformers.ParakeetFeatureExtractor.from_pretrained(f"{tmp}/hf")
    params = sum(p.numel() for p in ours32.parameters()) / 1e6
    from jobs.allocator import current

    print(f"{nemo_path}: {params:.1f} M parameters, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"load {os.getloadavg()[0]:.2f}, malloc: {current()} (all three share this process)")
    rows = []
    print(f"{'batch':>5} {'prec':>5} {'ours RTFx':>10} {'NeMo RTFx':>10} {'HF RTFx':>9} {'vs NeMo':>8} {'vs HF':>7} {'dec ours s':>11} {'dec NeMo s':>11} {'dec ratio':>9} {'tok/frame':>9}")
    import contextlib
    import copy

    precisions = args.precisions.split(",")
    ours16 = copy.deepcopy(ours32).to(torch.bfloat16) if "bf16" in precisions else None  # separate copies: a
    hf16 = copy.deepcopy(hf32).to(torch.bfloat16) if "bf16" in precisions else None  # round trip would round
    for b, prec in [(int(x), p) for x in args.batch_sizes.split(",") for p in precisions]:
        bf16 = prec == "bf16"
        ours, hf = (ours16, hf16) if bf16 else (ours32, hf32)
        amp = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext
        clips = [synthetic_audio(args.seconds, seed=i) for i in range(b)]
        audio_s = b * args.seconds
        wave = torch.from_numpy(np.stack(clips))
        lengths = torch.full((b,), wave.shape[1])
        t_ours = best_of(lambda: ours.transcribe_waveforms(wave, lengths, timestamps=True), args.repeats)
        def run_nemo():
            with amp():
                nm.transcribe(clips, batch_size=b, verbose=False, timestamps=False)

        t_nemo = best_of(run_nemo, args.repeats)

        def run_hf():
            inputs = fe(clips, sampling_rate=16000, return_tensors="pt")
            with torch.no_grad():
                hf.generate(input_features=inputs["input_features"].to(hf.dtype), attention_mask=inputs["attention_mask"])

        try:
            t_hf = best_of(run_hf, args.repeats)
        except (IndexError, RuntimeError) as e:  # generate() fails when a duration logit wins the argmax
            t_hf = float("nan")
            print(f"  transformers generate() failed at batch {b}: {type(e).__name__}: {e}")
        with torch.no_grad():
            enc, enc_len = ours.encode(wave, lengths)
        c = ours.config
        d_ours = best_of(lambda: greedy_tdt(enc, enc_len, ours.predictor, ours.joint, c.blank_id, c.durations, c.max_symbols_per_step), args.repeats)
        tokens = sum(len(h.token_ids) for h in greedy_tdt(enc, enc_len, ours.predictor, ours.joint, c.blank_id, c.durations, c.max_symbols_per_step))
        enc32 = enc.float()

        def decode_nemo():
            with torch.no_grad(), amp():
                nm.decoding.rnnt_decoder_predictions_tensor(encoder_output=enc32.transpose(1, 2), encoded_lengths=enc_len)

        d_nemo = best_of(decode_nemo, args.repeats)
        row = {"batch": b, "precision": prec, "tokens_per_frame": tokens / float(enc_len.sum()), "audio_s": audio_s, "ours_s": t_ours, "nemo_s": t_nemo, "hf_s": t_hf,
               "ours_rtfx": audio_s / t_ours, "nemo_rtfx": audio_s / t_nemo, "hf_rtfx": audio_s / t_hf,
               "decode_ours_s": d_ours, "decode_nemo_s": d_nemo}
        rows.append(row)
        print(f"{b:>5} {prec:>5} {row['ours_rtfx']:>10.1f} {row['nemo_rtfx']:>10.1f} {row['hf_rtfx']:>9.1f} {t_nemo / t_ours:>7.2f}x {t_hf / t_ours:>6.2f}x "
              f"{d_ours:>11.3f} {d_nemo:>11.3f} {d_nemo / d_ours:>8.2f}x {row['tokens_per_frame']:>8.2f}")
    with open(args.json, "w") as f:
        json.dump({"checkpoint": nemo_path, "params_m": params, "rows": rows}, f, indent=2)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
