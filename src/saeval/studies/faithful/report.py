"""The FaithfulSAE data study's report section: shared-feature table and cross-data table."""

from __future__ import annotations

import html


def _fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def report(result) -> str:
    """HTML of a FaithfulResult."""
    cfg, d, m = result.config, result.details, result.metrics
    corpus = d.corpora[0]
    self_name = d.corpora[1]

    def row(label: str, match) -> str:
        return (f"<tr><td>{html.escape(label)}</td><td>{match.shared_feature_ratio:.4f}</td>"
                f"<td>{match.top1_ratio:.4f}</td><td>{match.mean_matched_cosine:.3f}</td></tr>")

    seeds = cfg.seeds
    rows = "".join(row(c, match) for c, match in d.cross_seed.items())
    labels = [f"{corpus} s{seeds[i]} vs {self_name} s{seeds[1 - i]}" for i in range(2)]
    labels += [f"same-seed check: {corpus} s{s} vs {self_name} s{s}" for s in seeds]
    rows += "".join(row(label, match) for label, match in zip(labels, d.cross_corpus + d.same_seed_check,
                                                                strict=True))
    across = max(x.shared_feature_ratio for x in [*d.cross_seed.values(), *d.cross_corpus])
    warning = (
        "<p class='note'><b>Undertrained:</b> SAEs that share a seed but not their data share "
        f"{m.shared_ratio_same_seed:.0%} of their features, more than any pair of different seeds ({across:.0%}): "
        "their decoders are still close to the random initialisation, so the shared feature ratios say little. "
        "Train longer (preset paper or more tokens).</p>"
        if m.undertrained
        else ""
    )
    data_rows = "".join(
        f"<tr><td>{html.escape(r.trained_on)}</td><td>{html.escape(r.evaluated_on)}</td>"
        f"<td>{_fmt(r.explained_variance, '.3f')}</td><td>{_fmt(r.explained_variance_faithfulsae, '.3f')}</td>"
        f"<td>{_fmt(r.l2_loss, '.4g')}</td><td>{_fmt(r.ce_diff, '.3f')}</td></tr>"
        for r in d.cross_data
    )
    train = d.train_config
    return (
        f"<h2 id='faithful'>FaithfulSAE: SAEs trained on {html.escape(corpus)} vs on the model's own text</h2>"
        f"<p class='note'>{html.escape(result.model or '')} {html.escape(result.hook)}; per corpus "
        f"{cfg.train_tokens} training tokens, {train.epochs} epochs, TopK d_sae {train.d_sae}"
        f" k {train.k}, seeds {list(seeds)}; preset {html.escape(result.preset)}.</p>"
        "<table><tr><th>pair</th><th>shared feature ratio</th><th>top-1 ratio</th><th>mean matched cosine</th>"
        f"</tr>{rows}</table>{warning}<h3>Cross-data (seed {seeds[0]} SAEs, held-out text)</h3>"
        "<table><tr><th>trained on</th><th>evaluated on</th><th>explained variance</th>"
        "<th>EV (FaithfulSAE)</th><th>L2 loss</th><th>CE diff</th></tr>"
        f"{data_rows}</table>"
    )
