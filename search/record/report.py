"""One self-contained HTML deployment report per study: data fingerprint, code version, space and
budget, the pick and why, validation (seeds) and test (paired bootstrap) figures with 95%
intervals, the per-group table against the study's reference (plain fusion, or CLIP:
search.record.reference), the figures (PNG inlined; the Pareto front
interactive, with ONE embedded copy of plotly.js so it opens on a network without internet),
package versions. Aggregates only: no file names, no per-patient values.
"""
from __future__ import annotations

import base64
import hashlib
import html
import importlib.metadata
import math
import os
from pathlib import Path

import plotly.graph_objects as go

from search.record.expected_max import line
from search.record.summary import robustness_metrics
from search.record.reference import FUSION, saved_reference

PACKAGES = ("torch", "timm", "ray", "optuna", "mlflow", "numpy", "scikit-learn", "scipy", "plotly")


def data_fingerprint(root: str) -> str:
    """sha1 over (relative path, size) of every file under the data root: changes when the data
    does; reveals no file name."""
    h = hashlib.sha1()
    for dirpath, _, files in sorted(os.walk(root)):
        for name in sorted(files):
            p = Path(dirpath) / name
            h.update(f"{p.relative_to(root)}\0{p.stat().st_size}\n".encode())
    return h.hexdigest()[:16]


def versions() -> dict[str, str]:
    out = {}
    for pkg in PACKAGES:
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = "absent"
    return out


def _f(v, digits=4) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def _table(head: list[str], rows: list[list]) -> str:
    th = "".join(f"<th>{html.escape(str(h))}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{th}</tr>{body}</table>"


def _figures(files: list[Path], front_html: str) -> str:
    parts = [front_html] if front_html else []
    for png in (f for f in files if f.suffix == ".png"):
        data = base64.b64encode(png.read_bytes()).decode()
        parts.append(f"<figure><img src='data:image/png;base64,{data}' style='max-width:640px'>"
                     f"<figcaption>{html.escape(png.stem)}</figcaption></figure>")
    return "\n".join(parts)


def _front_html(full: list[dict]) -> str:
    if not full:
        return ""
    fig = go.Figure(go.Scatter(x=[t["val"]["auc"] for t in full], y=[t["val"]["es_auc"] for t in full],
                               mode="markers", text=[t["trial_id"] for t in full]))
    fig.update_layout(title="Full-length search trials (hover: trial id)", xaxis_title="val AUC",
                      yaxis_title="val ES-AUC", width=640, height=420)
    return fig.to_html(include_plotlyjs=True, full_html=False)


def _evidence(choice: dict) -> list[str]:
    """The rule's evidence (search.decide.rule): its one-line reason, per candidate the paired
    validation difference to the reference with its interval, raw and Holm p, and the gain the
    study could detect."""
    ev = choice.get("evidence") or {}
    ref = ev.get("baseline_name") or FUSION.name   # evidence saved before the name: plain fusion
    rows = ev.get("candidates") or {}
    if not rows:   # no decision (a table the rule cannot read): its reason alone
        return [f"<p><b>Decision: {html.escape(choice['reason'])}</b></p>"] if choice.get("reason") else []
    out = [f"<p><b>Decision: {html.escape(choice.get('reason', ''))}</b></p>",
           _table(["candidate", f"val ES-AUC - {ref} (paired, 95% t interval)", "val AUC mean",
                   "one-sided p", "Holm p", "gain detectable (80% power)", "eligible", "shown better"],
                  [[k, f"{_f(r['diff'])} [{_f(r['diff_lo'])}, {_f(r['diff_hi'])}]", _f(r["val_auc"]),
                    _f(r["p"], 3), _f(r["p_holm"], 3), _gain(r["min_detectable_gain"], ev),
                    "yes" if r["eligible"] else "no (AUC floor)", "yes" if r["shown_better"] else "no"]
                   for k, r in rows.items()]),
           f"<p>{html.escape(ev.get('detection', ''))} ({html.escape(ev['min_detectable_note'])}); "
           f"familywise error {ev['alpha']}.</p>"]
    for w in ev.get("warnings", []):
        out.append(f"<p>Warning: {html.escape(w)}</p>")
    return out


def _gain(gain: float, ev: dict) -> str:
    """A detectable gain, or "none achievable" above 1 - the reference's ES-AUC."""
    return _f(gain, 3) if gain <= ev.get("headroom", 1.0) else "none achievable"


def _front_table(decision: dict) -> str:
    """The front over the pareto objectives (front_keys; AUC and ES-AUC before them), with the
    floors' verdict when the study has floors."""
    keys = [k for k in decision.get("front_keys") or [] if k not in ("auc", "es_auc")]
    space, limits = list(decision.get("space", {})), decision.get("floors") or {}
    head = (["trial", "val AUC", "val ES-AUC"] + [k if k.startswith("val/") else f"val {k}" for k in keys]
            + (["floors met"] if limits else []) + space)
    rows = [[t["trial_id"], _f(t["auc"]), _f(t["es_auc"])] + [_f((t.get("values") or {}).get(k)) for k in keys]
            + (["yes" if t.get("feasible", True) else "no"] if limits else [])
            + [_f(t["params"][k], 4) for k in space] for t in decision.get("front", [])]
    floors = (f"<p>Floors: {html.escape(', '.join(f'{k} >= {_f(v)}' for k, v in limits.items()))}</p>"
              if limits else "")
    return _table(head, rows) + floors


def _robustness(rob: dict | None) -> list[str]:
    """The deployed model on the test split: complete (same site), each modality removed from
    every sample, the samples that lack one, and the other site (--shift-root)."""
    if not rob:
        return []
    flat, same = robustness_metrics(rob), rob.get("same_site") or {}
    mods = sorted({k.split("/")[2] for k in flat if k.startswith(("test/missing/", "test/absent/"))})
    rows = [["complete, same site", "", _f(same.get("auc")), _f(same.get("es_auc"))]]
    for m in mods:
        rows.append([f"without {m} (removed from every sample)", "", _f(flat.get(f"test/missing/{m}/auc")),
                     _f(flat.get(f"test/missing/{m}/es_auc"))])
        if flat.get(f"test/absent/{m}/n", 0) > 0:   # samples that really lack m
            rows.append([f"samples lacking {m}", f"{flat[f'test/absent/{m}/n']:.0f}",
                         _f(flat.get(f"test/absent/{m}/auc")), _f(flat.get(f"test/absent/{m}/es_auc"))])
    if rob.get("shift"):
        rows.append(["other site (--shift-root)", f"{flat.get('test/shift/n', float('nan')):.0f}",
                     _f(flat.get("test/shift/auc")), _f(flat.get("test/shift/es_auc"))])
        rows += [[f"other site, without {m}", "", _f(flat.get(f"test/shift/missing/{m}/auc")),
                  _f(flat.get(f"test/shift/missing/{m}/es_auc"))] for m in mods
                 if f"test/shift/missing/{m}/auc" in flat or f"test/shift/missing/{m}/es_auc" in flat]
    return [f"<h2>Robustness of the deployed model ({html.escape(str(rob.get('candidate', '')))}; test "
            "split, point figures)</h2>", _table(["test set", "n", "AUC", "ES-AUC"], rows)]


def render(search: dict, decision: dict, figure_files: list[Path], full: list[dict], commit: str) -> str:
    conf, test = decision.get("confirmation", {}), decision.get("test", {})
    choice = conf.get("choice", {})
    label, ref = choice.get("label", "n/a"), saved_reference(decision).name
    # the reference's entry carries the paper's values, unused by it: show none
    cand = conf.get("candidates", {}).get(label, {}) if label != "baseline" else {}
    sections = [f"<h1>MultiFair deployment report: {html.escape(search['name'])}</h1>",
                "<h2>Provenance</h2>", _table(["item", "value"], [
                    ["dataset / attribute", f"{search['dataset']} / {search['attribute']}"],
                    ["data fingerprint", decision.get("data_fingerprint", "n/a")],
                    ["code version (git)", commit], ["objective", search.get("objective")],
                    ["budget", f"{search['num_samples']} trials x {search['max_epochs']} epochs, ASHA "
                               f"grace {search['grace_period']}, reduction {search['reduction_factor']}"],
                    ["space", ", ".join(f"{k} {v}" for k, v in decision.get("space", {}).items())]]),
                "<h2>Pareto front of the search (validation, best epoch, full-length trials)</h2>",
                _front_table(decision),
                "<h2>Confirmation (fresh seeds, validation)</h2>",
                f"<p>Rule: {html.escape(choice.get('rule', 'n/a'))}. Chosen: <b>{html.escape(label)}</b> "
                f"{html.escape(str({k: v for k, v in cand.items() if k != 'trial_id'}) if cand else f'({ref})')}</p>",
                _table(["candidate", "seeds", "val AUC mean ± sd", "val ES-AUC mean ± sd"],
                       [[k, s["n_seeds"], f"{_f(s['auc'])} ± {_f(s['auc_std'])}",
                         f"{_f(s['es_auc'])} ± {_f(s['es_auc_std'])}"] for k, s in conf.get("stats", {}).items()])]
    sections += _evidence(choice)
    if decision.get("expected_max"):
        sections.append(f"<h2>Would more trials help?</h2><p>{html.escape(line(decision['expected_max']))} "
                        "(figure expected_max below).</p>")
    if test:
        sections += [f"<h2>Test split, scored once (n={test['n_test']}, {test['n_resamples']} paired "
                     "bootstrap resamples, 95% percentile intervals)</h2>",
                     f"<p>Candidate scored: {html.escape(str(test.get('candidate', label)))}; deployed: "
                     f"{html.escape(str(test.get('deployed', label)))}.</p>",
                     _table(["metric", ref, "candidate", f"candidate - {ref}"],
                            [[k, f"{_f(r['baseline'])} [{_f(r['baseline_lo'])}, {_f(r['baseline_hi'])}]",
                              f"{_f(r['chosen'])} [{_f(r['chosen_lo'])}, {_f(r['chosen_hi'])}]",
                              f"{_f(r['diff'])} [{_f(r['diff_lo'])}, {_f(r['diff_hi'])}]"]
                             for k, r in test.items() if isinstance(r, dict) and "diff" in r]),
                     "<h3>Per group (test AUC)</h3>",
                     _table(["group", "n", ref, "candidate"],
                            [[g, test["per_group"]["count"].get(g), _f(a), _f(test["per_group"]["chosen"].get(g))]
                             for g, a in test["per_group"]["baseline"].items()])]
        extra = decision.get("thresholded") or {}
        if extra:   # present once the trainer reports thresholded fairness (science issue)
            sections.append("<p>" + html.escape(", ".join(f"{k} {_f(v)}" for k, v in extra.items())) + "</p>")
    sections += _robustness(decision.get("robustness"))
    if decision.get("registered"):
        r = decision["registered"]
        sections.append(f"<h2>Registry</h2><p>{html.escape(r['uri'])} (version {r['version']})</p>")
    sections += ["<h2>Figures</h2>", _figures(figure_files, _front_html(full)),
                 "<h2>Package versions</h2>", _table(["package", "version"], list(versions().items()))]
    style = "body{font-family:sans-serif;max-width:980px;margin:auto}table{border-collapse:collapse}" \
            "td,th{border:1px solid #bbb;padding:3px 8px}"
    return f"<!doctype html><html><head><meta charset='utf-8'><style>{style}</style></head><body>" \
           + "\n".join(sections) + "</body></html>"
