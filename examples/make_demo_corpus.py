"""Synthetic English speech corpus for the bundled demo model: espeak-ng speaks generated sentences.

    python examples/make_demo_corpus.py /tmp/demo_corpus --train 2400 --val 120 --test 120

Sentences come from a small deterministic grammar (seeded), spoken by several espeak-ng voices at
several speeds, written as 16 kHz mono WAV with train/val/test JSONL manifests (audio_uri, text,
duration_s). Test and validation sentences are never in the training set.
"""
from __future__ import annotations

import argparse
import json
import random
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import soundfile as sf

VOICES = ["en-us", "en-gb", "en-us+f3", "en-us+m3", "en-gb+f2", "en-us+m7"]
SPEEDS = [140, 155, 170, 185]

SUBJECTS = ["the cat", "a small dog", "my brother", "the old man", "our teacher", "the pilot", "a young girl",
            "the farmer", "his sister", "the captain", "every student", "the doctor", "a tired driver", "the baker",
            "your friend", "the children", "the nurse", "a stranger", "the king", "the engineer"]
VERBS = ["sees", "likes", "finds", "carries", "paints", "opens", "buys", "cleans", "follows", "watches",
         "fixes", "reads", "sells", "builds", "visits", "counts", "brings", "hides", "moves", "checks"]
OBJECTS = ["a red box", "the green door", "three apples", "the heavy bag", "a blue car", "the morning paper",
           "two letters", "the kitchen table", "a wooden chair", "the garden gate", "seven stones", "a warm coat",
           "the broken clock", "an empty bottle", "the yellow house", "four books", "the silver key", "a long rope",
           "the river boat", "a paper map"]
PLACES = ["in the park", "at the station", "near the river", "after dinner", "before noon", "on the bridge",
          "at the market", "in the morning", "under the tree", "by the window", "at night", "in the city",
          "on monday", "last summer", "at school", "in the rain"]
QUESTIONS = ["where is", "who has", "why does he want", "when will she see", "what about", "can you find"]
EXCLAIM = ["look at", "watch out for", "never touch", "stop"]


def sentence(rng: random.Random) -> str:
    kind = rng.random()
    if kind < 0.6:
        s = f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)}"
        if rng.random() < 0.6:
            s += f" {rng.choice(PLACES)}"
        if rng.random() < 0.3:
            s += f", and {rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)}"
        end = "."
    elif kind < 0.85:
        s, end = f"{rng.choice(QUESTIONS)} {rng.choice(OBJECTS)}", "?"
    else:
        s, end = f"{rng.choice(EXCLAIM)} {rng.choice(OBJECTS)}", "!"
    return s[0].upper() + s[1:] + end


def unique_sentences(n: int, seed: int, exclude: set[str]) -> list[str]:
    rng, out, seen = random.Random(seed), [], set(exclude)
    while len(out) < n:
        s = sentence(rng)
        if s not in seen:
            seen.add(s)
            out.append(s)
    return out


def speak(args) -> dict:
    path, text, voice, speed = args
    subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-w", str(path) + ".raw.wav", text], check=True)
    subprocess.run(["sox", str(path) + ".raw.wav", "-r", "16000", "-c", "1", "-b", "16", str(path)], check=True)
    Path(str(path) + ".raw.wav").unlink()
    return {"audio_uri": str(path), "text": text, "duration_s": round(sf.info(str(path)).duration, 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--train", type=int, default=2400)
    ap.add_argument("--val", type=int, default=120)
    ap.add_argument("--test", type=int, default=120)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    held_out = unique_sentences(args.val + args.test, args.seed + 1, set())
    train = unique_sentences(args.train, args.seed, set(held_out))
    splits = {"train": train, "val": held_out[: args.val], "test": held_out[args.val :]}
    rng = random.Random(args.seed)
    for split, texts in splits.items():
        folder = args.out / split
        folder.mkdir(parents=True, exist_ok=True)
        jobs = [(folder / f"{split}_{i:05d}.wav", t, rng.choice(VOICES), rng.choice(SPEEDS)) for i, t in enumerate(texts)]
        with ThreadPoolExecutor(4) as pool:
            rows = list(pool.map(speak, jobs))
        with open(args.out / f"{split}.jsonl", "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
        print(f"{split}: {len(rows)} clips, {sum(r['duration_s'] for r in rows) / 3600:.2f} h")


if __name__ == "__main__":
    main()
