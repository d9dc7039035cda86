"""The gallery: results/index.html with every study's figures and key numbers, from saved runs.

Built from the run folders only (nothing is recomputed): for each study the default run
(`results/<name>/`) if there is one, else its quick run (`results/<name>-quick/`), else a line
saying how to run it. Numbers come from summary.json, measured beside theory where the study
gives a theory value.

Run: make report   (python -m sandbox.report [--results DIR])
"""

import html
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sandbox import cli, results

# Every study in lecture order (studies not written yet are listed as not run).
STUDIES = (
    ("gradient", "What is a gradient? z = y² − x²"),
    ("descent", "Gradient descent on J = θ1² + θ2²"),
    ("convex", "Convex versus non-convex"),
    ("local_minima", "Local minima and basins of attraction"),
    ("saddle", "Saddle points"),
    ("normalization", "Normalization as conditioning"),
    ("initialization", "Optimizer performance versus initialization"),
    ("learning_rate", "Learning rate: too small, right, too large"),
    ("fractal", "The fractal boundary of trainability (Sohl-Dickstein 2024)"),
    ("edge_of_stability", "Edge of stability: sharpness against 2/η (Cohen et al. 2021, 2022)"),
    ("momentum", "Momentum and escaping minima"),
    ("optimizers", "Optimizers compared, each tuned fairly"),
    ("train_resnet", "Training ResNet-56 with and without skip connections"),
    ("resnet_landscape", "The ResNet-56 loss landscape"),
    ("mode_connectivity", "Mode connectivity: a curve between two networks (Garipov et al. 2018)"),
    ("sharpness_map", "Sharpness maps over filter-normalized planes"),
    ("central_flows", "Central flows: where GD goes at the edge of stability (Cohen et al. 2025)"),
)

# The explorer's default address (`make explore`): the gallery links to it.
EXPLORER = "http://127.0.0.1:8765/"

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: 0.2em; }
.meta { color: #666; font-size: 0.9em; } .missing { color: #a33; }
figure { display: inline-block; margin: 0.5em; vertical-align: top; }
img { max-width: 520px; border: 1px solid #eee; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0; }
td, th { border: 1px solid #ddd; padding: 2px 8px; text-align: left; }
td.num { text-align: right; font-family: monospace; }
"""


def _fmt(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return f"{v:.4g}" if math.isfinite(v) else str(v)
    if isinstance(v, list):
        return "[" + ", ".join(_fmt(x) for x in v[:8]) + (", ..." if len(v) > 8 else "") + "]"
    return str(v)


def summary_rows(summary: dict, prefix: str = "") -> list[tuple[str, str, str]]:
    """(name, measured, theory) rows: dicts with a "measured" key become one row each."""
    rows = []
    for k, v in summary.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict) and "measured" in v:
            rows.append((name, _fmt(v["measured"]), _fmt(v.get("theory", ""))))
        elif isinstance(v, dict):
            rows.extend(summary_rows(v, name + " / "))
        else:
            rows.append((name, _fmt(v), ""))
    return rows


def _section(results_dir: Path, name: str, title: str, out_dir: Path) -> str:
    parts = [f'<h2 id="{name}">{html.escape(title)} <small>({name})</small></h2>']
    candidates = [(results_dir / name, "default run"), (results_dir / f"{name}-quick", "quick run")]
    found = [(f, how) for f, how in candidates if (f / "summary.json").exists()]
    if not found:
        return parts[0] + f'<p class="missing">not run yet: <code>make {name}</code></p>'
    folder, label = found[0]
    meta = {}
    if (folder / "meta.json").exists():
        meta = json.loads((folder / "meta.json").read_text())
    parts.append(
        f'<p class="meta">{label}, {html.escape(str(folder))}; '
        f"{meta.get('wall_s', '?')} s on {meta.get('num_devices', '?')} x "
        f"{html.escape(str((meta.get('devices') or ['?'])[0]))}; commit "
        f"{html.escape(str(meta.get('git_commit') or '?')[:10])}</p>"
    )
    if name == "local_minima" and (folder / "config.json").exists():
        parts.append(_explorer_links(json.loads((folder / "config.json").read_text())))
    summary = json.loads((folder / "summary.json").read_text())
    rows = summary_rows(summary)
    if rows:
        parts.append("<table><tr><th>quantity</th><th>measured</th><th>theory</th></tr>")
        for k, m, t in rows[:200]:
            parts.append(
                f"<tr><td>{html.escape(k)}</td><td class=num>{html.escape(m)}</td>"
                f"<td class=num>{html.escape(t)}</td></tr>"
            )
        parts.append("</table>")
    for img in sorted(folder.glob("*.png")) + sorted(folder.glob("*.gif")):
        src = html.escape(Path(os.path.relpath(img.resolve(), out_dir.resolve())).as_posix())
        parts.append(
            f'<figure><img src="{src}" alt="{html.escape(img.name)}" loading="eager" '
            f'onload="this.dataset.ok=1" onerror="this.dataset.ok=0">'
            f"<figcaption>{html.escape(img.name)}</figcaption></figure>"
        )
    return "\n".join(parts)


def _explorer_links(config: dict) -> str:
    """Links that open each basin map of the local_minima study in the explorer."""
    links = []
    for name, optimizer, lr, steps in config.get("maps", []):
        q = f"?landscape={name}&optimizer={optimizer}&lr={lr}&steps={steps}"
        text = html.escape(f"{name}, {optimizer}, lr {lr}")
        links.append(f'<a href="{html.escape(EXPLORER + q)}">{text}</a>')
    return "<p>Zoom into these maps live (<code>make explore</code>): " + ", ".join(links) + "</p>"


def _sweeps(results_dir: Path) -> str:
    """The sweep stores found under the results folder (a `sweep.json` each): what each
    computes, how far it is, and the commands that show it."""
    from sandbox import sweep

    items = []
    for meta in sorted(results_dir.rglob("sweep.json")):
        folder = meta.parent
        try:
            state = sweep.status(folder).splitlines()[:2]
        except (OSError, ValueError) as e:  # a damaged store is listed with why
            state = [f"cannot be read: {e}"]
        where = html.escape(str(folder))
        items.append(
            f"<li><code>{where}</code>: {html.escape(' / '.join(state))}; open it with "
            f"<code>python -m sandbox.explore --sweep {where}</code>, summarize with "
            f"<code>python -m sandbox.sweep show {where}</code></li>"
        )
    if not items:
        return (
            '<section id="sweeps"><h2>Sweeps</h2><p>No sweep store under this folder '
            "(<code>python -m sandbox.sweep run SPEC --store results/NAME</code>).</p></section>"
        )
    return '<section id="sweeps"><h2>Sweeps</h2><ul>' + "".join(items) + "</ul></section>"


def build(results_dir: Path | str = results.RESULTS_ROOT, out: Path | str | None = None) -> Path:
    """Writes the gallery (default results/index.html) atomically; returns its path."""
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise ValueError(f"`--results` must be a folder of study results, got {str(results_dir)!r}")
    out = Path(out) if out is not None else results_dir / "index.html"
    body = [_section(results_dir, name, title, out.parent) for name, title in STUDIES]
    body.append(_sweeps(results_dir))
    toc = " · ".join(f'<a href="#{n}">{n}</a>' for n, _ in STUDIES)
    page = (
        "<!doctype html><html><head><meta charset='utf-8'><title>gradient-sandbox results"
        f"</title><style>{_CSS}</style></head><body><h1>gradient-sandbox results</h1>"
        f"<p>{toc}</p><p>Zoom into basin maps and the trainability boundary, computed live: run "
        f'<code>make explore</code> and open <a id="explorer" href="{EXPLORER}">the explorer</a>.'
        "</p>" + "\n".join(body) + "</body></html>\n"
    )
    return results.atomic_write_bytes(out, page.encode())


@cli.command
def main(argv: Sequence[str] | None = None) -> None:
    p = cli.Parser(prog="python -m sandbox.report", description=__doc__.splitlines()[0])
    p.add_argument("--results", type=Path, default=results.RESULTS_ROOT)
    args = p.parse_args(argv)
    print(f"gallery: {build(args.results)}")


if __name__ == "__main__":
    main()
