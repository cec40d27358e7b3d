"""Report section of the synthetic-activations eval: summary against the paper, MS-step distributions,
example curves and plateaus, per SAE."""

from __future__ import annotations

import html

import numpy as np

from saeval.evals.synthetic.config import GRID_MAX, TARGET_TYPES

# The paper's setting (Giglemiani et al. 2024, GPT-2 small): the hook it perturbs and its mean L2 MS steps.
PAPER_HOOK = "blocks.1.hook_resid_pre"
PAPER_MS = {"real": 51.6, "sae_recon": 53.3, "synthetic_structured": 55.7, "synthetic_baseline": 56.9, "random": 65.0}
ORDER = (("real", "ms_real", "real"), ("sae_recon", "ms_sae_recon", "SAE recon"),
         ("synthetic_structured", "ms_synthetic_structured", "structured"),
         ("synthetic_baseline", "ms_synthetic_baseline", "baseline"), ("random", "ms_random", "random"))
# The comparison between consecutive targets in the paper's ordering: structured <= baseline, else strict.
RELATIONS = ("<", "<", "<=", "<")

COLORS = {"real": "#e67e22", "sae_recon": "#7f8c8d", "synthetic_structured": "#27ae60",
          "synthetic_baseline": "#8e44ad", "random": "#2980b9"}


def ordering_sentence(rec: dict) -> str:
    """One sentence: does the paper's ordering of mean MS steps hold for this SAE, with the measured and the
    paper's values, and whether the SAE sits at the paper's hook."""
    m, name = rec["metrics"], html.escape(rec["sae"]["name"])
    hook = (rec.get("details") or {}).get("hook") or rec["sae"].get("hook_name") or "?"
    values = [m.get(key) for _, key, _ in ORDER]
    if any(v is None for v in values):
        return f"<p><b>{name}</b> at {html.escape(hook)}: some mean MS steps are missing; no ordering verdict.</p>"
    chain = f"{ORDER[0][2]} {values[0]:.1f}"
    for (_, _, label), rel, prev, value in zip(ORDER[1:], RELATIONS, values[:-1], values[1:], strict=True):
        ok = prev < value if rel == "<" else prev <= value
        sym = {"<": "&lt;", "<=": "&le;"}[rel] if ok else "<b class='bad'>&#x226E;</b>" if rel == "<" else \
            "<b class='bad'>&#x2270;</b>"
        chain += f" {sym} {label} {value:.1f}"
    verdict = "holds" if m.get("paper_ordering_holds") else "does not hold"
    paper = " &lt; ".join(f"{PAPER_MS[t]:.1f}" for t, _, _ in ORDER[:3]) + \
        f" &le; {PAPER_MS['synthetic_baseline']:.1f} &lt; {PAPER_MS['random']:.1f}"
    where = ("the paper's hook" if hook == PAPER_HOOK else
             f"not the paper's hook ({PAPER_HOOK}), so only the ordering, not the values, compares")
    return (f"<p class='verdict'><b>{name}</b> at <code>{html.escape(hook)}</code> ({where}): the paper's ordering "
            f"of mean MS steps <b>{verdict}</b> — {chain} (paper on GPT-2: {paper}).</p>")


def report(records: list[dict]) -> str:
    """Per SAE: summary table against the paper, MS-step histograms and CDFs, example curves, plateaus."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    from saeval.report.figures import figure_html
    from saeval.report.tables import table_html

    parts = ["<p class='note'>Paper ordering (mean steps before the model's output blows up, moving a real "
             "activation towards each target): real &lt; SAE recon &lt; structured &le; baseline &lt; random.</p>"]
    parts += [ordering_sentence(rec) for rec in records]
    for rec in records:
        d, m = rec["details"], rec["metrics"]
        name = html.escape(rec["sae"]["name"])
        l2, kl, rel = d["ms_step_l2"], d["ms_step_kl"], d.get("ms_step_l2_relative") or {"mean": {}}
        plateau = d.get("plateau") or {"mean": {}, "std": {}}
        rows = [{
            "target": t,
            "MS step (L2) mean ± std": f"{l2['mean'][t]:.2f} ± {l2['std'][t]:.2f}",
            "paper (GPT-2)": d["paper_ms_step"].get(t, ""),
            "KS vs real": l2["ks_vs_real"].get(t, ""),
            "MS step (KL)": kl["mean"][t],
            "MS step (relative, L2)": rel["mean"].get(t, ""),
            "no blow-up": d["no_blowup_fraction"][t],
            "plateau mean ± std": (f"{plateau['mean'][t]:.2f} ± {plateau['std'][t]:.2f}"
                                   if t in plateau["mean"] else ""),
            "paper plateau": d["paper_plateau"].get(t, ""),
        } for t in TARGET_TYPES]
        verdict = "holds" if m["paper_ordering_holds"] else "does not hold"
        threshold = d.get("plateau_threshold") or 0.0
        derivation = html.escape(d.get("plateau_threshold_derivation") or "")
        note = (f"<p class='note'><b>{name}</b> at {html.escape(d['hook'])}, {d['n_samples']} samples, "
                f"{d['n_steps']} steps of {d['step_size']:.4g} ({html.escape(d['step_size_source'])}); "
                f"L2 read at {html.escape(d['read_hook'])}. Paper ordering real &lt; SAE recon &lt; "
                f"structured &le; baseline &lt; random: <b>{verdict}</b> (measured: "
                f"{' &lt; '.join(d['ordering'])}). Plateau threshold {threshold:.4g}: {derivation}. "
                f"Densities: {html.escape(d['density_source'])} ({d['density_tokens']} tokens, "
                f"{d['n_live_latents']} live latents).</p>")
        warn = "".join(f"<p class='note'>warning: {html.escape(w)}</p>" for w in d["warnings"])
        # The departures from teren's code are in the section's departures line.
        warn += f"<p class='note'>Rules: {html.escape(d.get('reference', 'saeval'))}.</p>"
        parts += [note, warn, table_html(rows, list(rows[0]), left=("target",))]

        fig = make_subplots(rows=1, cols=2, subplot_titles=("MS step (L2) histogram", "MS step (L2) CDF"))
        for t in TARGET_TYPES:
            values = np.sort(np.asarray(l2["per_sample"][t]))
            cdf = np.arange(1, len(values) + 1) / len(values)
            fig.add_trace(go.Histogram(x=values, name=t, marker_color=COLORS[t], opacity=0.55,
                                       xbins=dict(size=4), legendgroup=t), row=1, col=1)
            fig.add_trace(go.Scatter(x=values, y=cdf, mode="lines", line=dict(color=COLORS[t]), legendgroup=t,
                                     showlegend=False), row=1, col=2)
        fig.update_xaxes(title_text="MS step (L2, 100-point grid)")
        fig.update_yaxes(title_text="samples (count)", row=1, col=1)
        fig.update_yaxes(title_text="fraction of samples", row=1, col=2)
        fig.update_layout(barmode="overlay", title=f"{name}: where perturbations blow up")
        parts.append(figure_html(fig, top=80))

        fig = make_subplots(rows=1, cols=3, subplot_titles=("final-layer L2 vs step", "next-token KL vs step",
                                                            "plateau: L2 from target towards noise"))
        grid = GRID_MAX / (d["n_steps"] - 1)
        for t in TARGET_TYPES:
            for col, key in ((1, "l2"), (2, "kl"), (3, "plateau_l2")):
                for j, curve in enumerate(d["examples"][t][key]):
                    fig.add_trace(go.Scatter(x=[k * grid for k in range(len(curve))], y=curve, mode="lines",
                                             line=dict(color=COLORS[t], width=1), name=t, legendgroup=t,
                                             showlegend=(col == 1 and j == 0)), row=1, col=col)
        if d.get("plateau_threshold"):
            fig.add_hline(y=d["plateau_threshold"], line_dash="dot", row=1, col=3)
        fig.update_xaxes(title_text="step (100-point grid)")
        fig.update_yaxes(title_text="final-layer L2 distance", row=1, col=1)
        fig.update_yaxes(title_text="next-token KL (nats)", row=1, col=2)
        fig.update_yaxes(title_text="final-layer L2 distance", row=1, col=3)
        fig.update_layout(title=f"{name}: example curves")
        parts.append(figure_html(fig, top=80))

        if d.get("plateau"):
            fig = go.Figure()
            for t, values in d["plateau"]["per_sample"].items():
                fig.add_trace(go.Box(y=values, name=t, marker_color=COLORS[t], boxmean=True))
            fig.update_layout(title=f"{name}: plateau length (steps before L2 reaches the threshold)",
                              yaxis_title="steps")
            parts.append(figure_html(fig))
    return "\n".join(parts)
