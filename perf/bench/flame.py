"""py-spy's collapsed stacks: a flame graph SVG and the top costs, without other tools.

``py-spy record --format raw --full-filenames`` writes one line per distinct stack,
``frame;frame;...;leaf count``, each frame ``function (path:line)``.

>>> stacks = parse(["main (/x/a.py:1);work (/x/a.py:5) 30", "boot (/y/c.py:1);idle (/x/b.py:2) 10"])
>>> top(stacks, "self")[:1]
[('work (/x/a.py)', 30, 0.75)]
>>> categories(stacks, {"a.py": "app"})
{'app': 30, 'other': 10}
"""

from __future__ import annotations

import html
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path

_LINE = re.compile(r":\d+\)$")


def parse(lines: Iterable[str]) -> Counter:
    """Stacks (tuples of frames, line numbers dropped) → samples."""
    stacks: Counter = Counter()
    for line in lines:
        line = line.rstrip("\n")
        if not line or " " not in line:
            continue
        body, count = line.rsplit(" ", 1)
        frames = tuple(_LINE.sub(")", f) for f in body.split(";"))
        stacks[frames] += int(count)
    return stacks


def top(stacks: Mapping[tuple, int], kind: str = "self", n: int = 20) -> list[tuple[str, int, float]]:
    """The costliest functions: ``self`` (leaf samples) or ``total`` (on the stack)."""
    total = sum(stacks.values()) or 1
    counts: Counter = Counter()
    for frames, k in stacks.items():
        if kind == "self":
            counts[frames[-1]] += k
        else:
            for frame in set(frames):
                counts[frame] += k
    return [(f, k, round(k / total, 4)) for f, k in counts.most_common(n)]


def categories(stacks: Mapping[tuple, int], rules: Mapping[str, str]) -> dict[str, int]:
    """Samples by category of the innermost frame matching a rule (path fragment → name)."""
    out: Counter = Counter()
    for frames, k in stacks.items():
        name = "other"
        for frame in reversed(frames):
            hit = next((cat for frag, cat in rules.items() if frag in frame), None)
            if hit:
                name = hit
                break
        out[name] += k
    return dict(out.most_common())


def _tree(stacks: Mapping[tuple, int]) -> dict:
    root: dict = {"n": 0, "kids": {}}
    for frames, k in stacks.items():
        node = root
        node["n"] += k
        for frame in frames:
            node = node["kids"].setdefault(frame, {"n": 0, "kids": {}})
            node["n"] += k
    return root


def _color(name: str) -> str:
    h = sum(map(ord, name)) % 60
    return f"rgb({205 + h % 50},{90 + h},{40 + h // 2})"


def svg(stacks: Mapping[tuple, int], title: str, width: int = 1600, row: int = 16) -> str:
    """An icicle-style flame graph (root at the top) as an SVG document."""
    root = _tree(stacks)
    total = root["n"] or 1
    rects: list[str] = []
    depth_max = 0

    def walk(node: dict, x: float, depth: int) -> None:
        nonlocal depth_max
        for name, kid in sorted(node["kids"].items()):
            w = kid["n"] / total * width
            if w >= 0.3:
                depth_max = max(depth_max, depth)
                y = 24 + depth * row
                label = html.escape(name)
                tip = f"{label} — {kid['n']} samples ({kid['n'] / total:.1%})"
                text = html.escape(name[: int(w / 6.5)]) if w > 30 else ""
                rects.append(
                    f'<g><title>{tip}</title><rect x="{x:.1f}" y="{y}" width="{w:.1f}" '
                    f'height="{row - 1}" fill="{_color(name)}"/>'
                    f'<text x="{x + 2:.1f}" y="{y + row - 4}">{text}</text></g>'
                )
                walk(kid, x, depth + 1)
            x += w

    walk(root, 0.0, 0)
    height = 24 + (depth_max + 2) * row
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'font-family="monospace" font-size="10">'
        f'<text x="4" y="16" font-size="13">{html.escape(title)} — {total} samples</text>'
        + "".join(rects) + "</svg>"
    )


def write_svg(stacks: Mapping[tuple, int], path: Path, title: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(svg(stacks, title))
    return path
