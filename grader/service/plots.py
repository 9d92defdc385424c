"""The score histogram as an SVG bar chart (no plotting library on the server)."""
from __future__ import annotations

from html import escape


def histogram_svg(counts: list[int], max_score: float, title: str = "scores") -> str:
    w, h, left, bottom, top = 560, 280, 40, 40, 44
    n = len(counts)
    peak = max(counts) if counts and max(counts) else 1
    bw = (w - left - 10) / n
    plot_h = h - bottom - top
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" '
             f'role="img" aria-label="{escape(title)}" class="histogram">',
             f'<text x="{w / 2}" y="16" text-anchor="middle" font-size="13">{escape(title)}</text>',
             f'<line x1="{left}" y1="{h - bottom}" x2="{w - 10}" y2="{h - bottom}" stroke="#333"/>',
             f'<line x1="{left}" y1="{top}" x2="{left}" y2="{h - bottom}" stroke="#333"/>']
    for tick in sorted({0, peak // 2, peak}):
        y = h - bottom - plot_h * tick / peak
        parts.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="11">{tick}</text>')
    for i, c in enumerate(counts):
        bh = plot_h * c / peak
        x = left + i * bw
        lo, hi = max_score * i / n, max_score * (i + 1) / n
        parts.append(f'<rect class="bar" x="{x + 2:.1f}" y="{h - bottom - bh:.1f}" width="{bw - 4:.1f}" '
                     f'height="{bh:.1f}" fill="#3b6ea5"><title>{lo:g}-{hi:g}: {c}</title></rect>')
        parts.append(f'<text x="{x + bw / 2:.1f}" y="{h - bottom + 14}" text-anchor="middle" '
                     f'font-size="10">{lo:g}</text>')
        if c:
            parts.append(f'<text x="{x + bw / 2:.1f}" y="{h - bottom - bh - 4:.1f}" text-anchor="middle" '
                         f'font-size="11">{c}</text>')
    parts.append(f'<text x="{w / 2}" y="{h - 6}" text-anchor="middle" font-size="11">score '
                 f'(final, late penalty applied; max {max_score:g})</text>')
    parts.append("</svg>")
    return "\n".join(parts)
