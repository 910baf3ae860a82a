"""Human preference data from sentiment ratings: the snippets Hutto & Gilbert (2014, VADER) had rated by people.

The vaderSentiment source distribution (`pip download --no-deps --no-binary :all: vaderSentiment==3.3.2`; `make
install` keeps it in .venv/data) holds additional_resources/hutto_ICWSM_2014.tar.gz: movie-review (10.6k), tweet
(4.2k), product-review (3.7k) and editorial (5.2k) snippets, each with the mean rating of its human raters from -4
(most negative) to +4. Read from the archives directly, nothing extracted.

    ratings ─> split (disjoint snippets) ─> pairs: the higher-rated snippet preferred, margin = the rating gap
"""

from __future__ import annotations

import io
import os
import sys
import tarfile
from pathlib import Path

import numpy as np

from groundup.data.preference import Preference

VADER_SDIST = Path(sys.prefix) / "data" / "vaderSentiment-3.3.2.tar.gz"
DOMAINS = {"movie": "movieReviewSnippets", "tweet": "tweets", "product": "amazonReviewSnippets",
           "editorial": "nytEditorialSnippets"}


def human_ratings(domain: str = "movie", path: str | os.PathLike = VADER_SDIST) -> list[tuple[float, str]]:
    """(mean human rating in -4..4, snippet) for every distinct snippet of a domain (movie, tweet, product,
    editorial)."""
    if domain not in DOMAINS:
        raise ValueError(f"domain={domain!r}: use one of {sorted(DOMAINS)}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no vaderSentiment source distribution at {path}: pip download --no-deps "
                                "--no-binary :all: vaderSentiment==3.3.2 -d <folder> (make install does)")
    with tarfile.open(path) as outer:
        inner = outer.extractfile("vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz").read()
    with tarfile.open(fileobj=io.BytesIO(inner)) as tar:
        raw = tar.extractfile(f"hutto_ICWSM_2014/{DOMAINS[domain]}_GroundTruth.txt").read()
    out, seen = [], set()
    for line in raw.decode("utf-8", errors="replace").splitlines():
        parts = line.split("\t")
        text = parts[2].strip() if len(parts) >= 3 else ""
        if text and text not in seen:  # a few snippets occur twice: the first rating stands
            seen.add(text)
            out.append((float(parts[1]), text))
    return out


def split_ratings(ratings: list[tuple[float, str]], test_fraction: float = 0.2, seed: int = 0
                  ) -> tuple[list[tuple[float, str]], list[tuple[float, str]]]:
    """(train, test) on disjoint snippets."""
    order = np.random.default_rng(seed).permutation(len(ratings))
    n_test = int(len(ratings) * test_fraction)
    return [ratings[i] for i in order[n_test:]], [ratings[i] for i in order[:n_test]]


def rating_pairs(ratings: list[tuple[float, str]], n: int, min_margin: float = 1.0, prompt: str = "",
                 seed: int = 0) -> list[Preference]:
    """n pairs of distinct snippets whose ratings differ by at least min_margin; the higher-rated one is chosen
    and the margin is the gap."""
    if len(ratings) < 2:
        raise ValueError("rating_pairs needs at least two rated snippets")
    rng = np.random.default_rng(seed)
    out: list[Preference] = []
    for _ in range(50 * n):
        if len(out) == n:
            break
        a, b = (ratings[i] for i in rng.choice(len(ratings), 2, replace=False))
        if abs(a[0] - b[0]) >= min_margin and a[1] != b[1]:
            hi, lo = (a, b) if a[0] > b[0] else (b, a)
            out.append(Preference(prompt, hi[1], lo[1], len(out) + 1, hi[0] - lo[0]))
    if len(out) < n:
        raise ValueError(f"found {len(out)} of {n} pairs with a margin of {min_margin}; lower min_margin or n")
    return out
