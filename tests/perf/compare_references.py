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
transcribe and decoding under torch.autocast(device, bfloat16) (NeMo's own mixed-precision path), and
transformers with bf16 weights; the fp32 rows are the parity setting (outputs equal NeMo's).

--device cuda runs all of them on the GPU (the default, cpu, is unchanged): ours gets its batch already on
the device, NeMo gets numpy clips and moves them itself, transformers computes its features there; the
clock is read after torch.cuda.synchronize(). NeMo's greedy_batch TDT decoder then uses CUDA graphs (its
default) and runs outside autocast even in the bf16 rows; the mode it used is printed after the table.
--references nemo skips transformers. tests/perf/bench_gpu.py is this script with GPU defaults.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import sys
import tempfile
import time
from types import SimpleNamespace

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "data"))


def best_of(fn, repeats: int, device: str = "cpu") -> float:
    """Fastest of `repeats` calls after one warm-up, in seconds. On CUDA the clock is read only once the
    queued kernels are done."""
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    fn()  # warm-up (on CUDA also allocator growth, cuDNN and NeMo's CUDA-graph capture)
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
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


REFERENCES = ("nemo", "hf")


def parser(description: str | None = None) -> argparse.ArgumentParser:
    """This script's arguments; tests/perf/bench_gpu.py reuses them with GPU defaults."""
    ap = argparse.ArgumentParser(description=description or __doc__.split("\n\n")[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--nemo", help="a .nemo TDT checkpoint")
    src.add_argument("--shape", help="a preset architecture with random weights, e.g. parakeet-tdt-0.6b-v3")
    ap.add_argument("--batch-sizes", default="1,4,16")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--precisions", default="fp32", help="comma-separated: fp32 and/or bf16")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where ours and the references run")
    ap.add_argument("--references", default="nemo,hf", help="comma-separated: nemo and/or hf (transformers)")
    ap.add_argument("--json", default="compare_references.json")
    return ap


def check_args(ap: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Bad arguments stop the run before any model loads (argparse's exit 2)."""
    unknown = set(args.references.split(",")) - set(REFERENCES)
    if unknown:
        ap.error(f"--references: unknown {sorted(unknown)}; choose from {','.join(REFERENCES)}")
    if not set(args.precisions.split(",")) <= {"fp32", "bf16"}:
        ap.error(f"--precisions {args.precisions!r}: choose from fp32,bf16")
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error(f"--device cuda, but torch {torch.__version__} sees no CUDA device")


def load_models(args: argparse.Namespace) -> SimpleNamespace:
    """Ours in fp32 (and bf16), NeMo's and transformers' models (those in --references) on args.device,
    all with the same weights."""
    import nemo.collections.asr as nemo_asr
    from omegaconf import open_dict

    import model

    refs = args.references.split(",")
    tmp = tempfile.mkdtemp(prefix="compare-")
    nemo_path = args.nemo or build_nemo(args.shape, tmp)
    nm = None
    if "nemo" in refs:
        nm = nemo_asr.models.EncDecRNNTBPEModel.restore_from(nemo_path, map_location=torch.device(args.device))
        nm = nm.to(args.device).eval()
        with open_dict(nm.cfg):
            nm.cfg.validation_ds = nm.cfg.get("validation_ds") or {"use_start_end_token": False}
    # Loaded on the CPU and moved below: the --shape calibration (jobs.bench._realistic_emissions) adds a
    # CPU tensor to the joint's bias.
    ours32 = model.load(nemo_path)
    if args.shape:  # random joints emit a token at almost every step (or never): calibrate the blank bias
        from jobs.bench import _realistic_emissions  # to ~0.4 tokens per frame, then give NeMo the same bias

        _realistic_emissions(ours32)
        # A constant shift of the duration logits changes no decision of ours or NeMo's, and keeps them below
        # the token logits, where transformers' generate() (one argmax over both) would pick one and crash.
        with torch.no_grad():
            ours32.joint.head.bias[ours32.config.blank_id + 1 :] -= 30.0
        if nm is not None:
            head = [mod for mod in nm.joint.joint_net if isinstance(mod, torch.nn.Linear)][-1]
            with torch.no_grad():
                head.bias.copy_(ours32.joint.head.bias)
    hf32 = fe = None
    if "hf" in refs:
        import transformers

        model.save(ours32, f"{tmp}/hf")
        hf32 = transformers.ParakeetForTDT.from_pretrained(f"{tmp}/hf").to(args.device).eval()
        fe = transformers.ParakeetFeatureExtractor.from_pretrained(f"{tmp}/hf")
    ours32 = ours32.to(args.device)
    bf16 = "bf16" in args.precisions.split(",")
    ours16 = copy.deepcopy(ours32).to(torch.bfloat16) if bf16 else None  # separate copies: a
    hf16 = copy.deepcopy(hf32).to(torch.bfloat16) if bf16 and hf32 is not None else None  # round trip would round
    return SimpleNamespace(nemo_path=nemo_path, nm=nm, ours32=ours32, ours16=ours16, hf32=hf32, hf16=hf16, fe=fe)


def measure(m: SimpleNamespace, b: int, prec: str, args: argparse.Namespace) -> dict:
    """One table row: end-to-end times of ours and each reference on b clips of args.seconds, then the
    decoding-only times given ours' encoder output. Times in seconds, best of args.repeats."""
    from jobs.bench import synthetic_audio
    from model.decoding import greedy_tdt
    from model.label_looping import decoder_for

    dev = args.device
    bf16 = prec == "bf16"
    ours, hf = (m.ours16, m.hf16) if bf16 else (m.ours32, m.hf32)
    amp = (lambda: torch.autocast(dev, dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext
    clips = [synthetic_audio(args.seconds, seed=i) for i in range(b)]
    audio_s = b * args.seconds
    wave = torch.from_numpy(np.stack(clips)).to(dev)  # (B, N)
    lengths = torch.full((b,), wave.shape[1], device=dev)  # (B,) samples
    t_ours = best_of(lambda: ours.transcribe_waveforms(wave, lengths, timestamps=True), args.repeats, dev)
    row = {"batch": b, "precision": prec, "audio_s": audio_s, "ours_s": t_ours, "ours_rtfx": audio_s / t_ours}
    if m.nm is not None:
        def run_nemo():  # numpy clips: NeMo's transcribe moves them to the model's device itself
            with amp():
                m.nm.transcribe(clips, batch_size=b, verbose=False, timestamps=False)

        t_nemo = best_of(run_nemo, args.repeats, dev)
        row.update(nemo_s=t_nemo, nemo_rtfx=audio_s / t_nemo)
    if hf is not None:
        def run_hf():
            inputs = m.fe(clips, sampling_rate=16000, return_tensors="pt", device=dev)
            with torch.no_grad():
                hf.generate(input_features=inputs["input_features"].to(dev, hf.dtype), attention_mask=inputs["attention_mask"].to(dev))

        try:
            t_hf = best_of(run_hf, args.repeats, dev)
        except (IndexError, RuntimeError) as e:  # generate() fails when a duration logit wins the argmax
            t_hf = float("nan")
            print(f"  transformers generate() failed at batch {b}: {type(e).__name__}: {e}")
        row.update(hf_s=t_hf, hf_rtfx=audio_s / t_hf)
    with torch.no_grad():
        enc, enc_len = ours.encode(wave, lengths)  # (B, T, D), (B,)
    c = ours.config

    def decode():  # what transcribe runs: on CUDA the label-looping stages replayed as CUDA graphs
        if enc.device.type == "cuda":
            return decoder_for(ours, "greedy_batch", None)(enc, enc_len)
        return greedy_tdt(enc, enc_len, ours.predictor, ours.joint, c.blank_id, c.durations, c.max_symbols_per_step)

    row["decode_ours_s"] = best_of(decode, args.repeats, dev)
    row["tokens_per_frame"] = sum(len(h.token_ids) for h in decode()) / float(enc_len.sum())
    if m.nm is not None:
        enc32 = enc.float().transpose(1, 2)  # (B, D, T), NeMo's layout, on the device

        def decode_nemo():
            with torch.no_grad(), amp():
                m.nm.decoding.rnnt_decoder_predictions_tensor(encoder_output=enc32, encoded_lengths=enc_len)

        row["decode_nemo_s"] = best_of(decode_nemo, args.repeats, dev)
    return row


# (header, width, the reference it needs or None, cell) per table column
COLUMNS = [
    ("batch", 5, None, lambda r: f"{r['batch']:>5}"),
    ("prec", 5, None, lambda r: f"{r['precision']:>5}"),
    ("ours RTFx", 10, None, lambda r: f"{r['ours_rtfx']:>10.1f}"),
    ("NeMo RTFx", 10, "nemo", lambda r: f"{r['nemo_rtfx']:>10.1f}"),
    ("HF RTFx", 9, "hf", lambda r: f"{r['hf_rtfx']:>9.1f}"),
    ("vs NeMo", 8, "nemo", lambda r: f"{r['nemo_s'] / r['ours_s']:>7.2f}x"),
    ("vs HF", 7, "hf", lambda r: f"{r['hf_s'] / r['ours_s']:>6.2f}x"),
    ("dec ours s", 11, None, lambda r: f"{r['decode_ours_s']:>11.3f}"),
    ("dec NeMo s", 11, "nemo", lambda r: f"{r['decode_nemo_s']:>11.3f}"),
    ("dec ratio", 9, "nemo", lambda r: f"{r['decode_nemo_s'] / r['decode_ours_s']:>8.2f}x"),
    ("tok/frame", 9, None, lambda r: f"{r['tokens_per_frame']:>8.2f}"),
]


def nemo_cuda_graphs_mode(nm) -> str | None:
    """NeMo's TDT greedy_batch decoder (GreedyBatchedTDTInfer) keeps a GreedyBatchedTDTLabelLoopingComputer
    in `decoding_computer`; its `cuda_graphs_mode` is full_graph, no_while_loops (partial graphs) or
    None (off), and falls back from full_graph to no_while_loops when compiling fails
    (nemo/collections/asr/parts/submodules/transducer_decoding/label_looping_base.py)."""
    mode = getattr(getattr(nm.decoding.decoding, "decoding_computer", None), "cuda_graphs_mode", None)
    return None if mode is None else str(mode)


def run(args: argparse.Namespace) -> list[dict]:
    """Loads the models, prints the header and one table line per (batch size, precision), writes
    args.json; returns the rows."""
    from jobs.allocator import current

    m = load_models(args)
    refs = args.references.split(",")
    params = sum(p.numel() for p in m.ours32.parameters()) / 1e6
    where = f"{torch.get_num_threads()} threads"
    if args.device == "cuda":
        where = f"GPU {torch.cuda.get_device_name()}, CUDA {torch.version.cuda}, {where}"
    print(f"{m.nemo_path}: {params:.1f} M parameters, torch {torch.__version__}, {where}, "
          f"load {os.getloadavg()[0]:.2f}, malloc: {current()} (ours and {'+'.join(refs)} share this process)")
    cols = [col for col in COLUMNS if col[2] is None or col[2] in refs]
    print(" ".join(f"{name:>{width}}" for name, width, _, _ in cols))
    rows = []
    for b, prec in [(int(x), p) for x in args.batch_sizes.split(",") for p in args.precisions.split(",")]:
        rows.append(measure(m, b, prec, args))
        print(" ".join(cell(rows[-1]) for _, _, _, cell in cols))
    summary = {"checkpoint": m.nemo_path, "params_m": params, "device": args.device, "torch": torch.__version__, "rows": rows}
    if args.device == "cuda":
        summary.update(gpu=torch.cuda.get_device_name(), cuda=torch.version.cuda)
        if m.nm is not None:  # read after the runs: a failed full_graph compile has fallen back by now
            summary["nemo_cuda_graphs_mode"] = nemo_cuda_graphs_mode(m.nm)
            print(f"NeMo decoder: {type(m.nm.decoding.decoding).__name__}, CUDA graphs mode: {summary['nemo_cuda_graphs_mode']}")
    with open(args.json, "w") as f:
        json.dump(summary, f, indent=2)
    print(f"wrote {args.json}")
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = parser()
    args = ap.parse_args(argv)
    check_args(ap, args)
    run(args)


if __name__ == "__main__":
    main()
