"""Job summary reports: `ocula-report.json` and a small self-contained `ocula-report.html`.

Both are written atomically into the job's output folder. Failures are streamed
from the job store, so a job with 100,000 failed inputs still writes its report
without holding them all; the HTML page shows the first few hundred.
"""
from __future__ import annotations

import html
import json
import os
import statistics
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.paths import make_temp_file

if TYPE_CHECKING:
    from engine.jobs.job_events import JobSummary
    from engine.jobs.spec import JobSpec
    from engine.jobs.store import JobStore

REPORT_JSON = "ocula-report.json"
REPORT_HTML = "ocula-report.html"
HTML_FAILURES_SHOWN = 500


def timing_stats(durations: list[float]) -> dict[str, float]:
    if not durations:
        return {}
    ordered = sorted(durations)
    p95 = ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))]
    return {"mean_s": statistics.fmean(ordered), "median_s": statistics.median(ordered),
            "p95_s": p95, "max_s": ordered[-1]}


def write_job_report(store: JobStore, job_id: str, summary: JobSummary,
                     spec: JobSpec) -> tuple[Path, Path]:
    out_dir = Path(summary.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    timings = {"elapsed_s": round(summary.elapsed_s, 3),
               "items_per_s_this_run": round(summary.rate, 3),
               **{f"per_item_{k}": round(v, 4)
                  for k, v in timing_stats(store.durations(job_id)).items()}}
    head = {
        "job_id": job_id, "state": summary.state, "task": spec.task, "model": spec.model,
        "device": spec.device, "precision": spec.precision, "inputs": spec.inputs,
        "ran": summary.ran,  # what really ran: placement, precision/variant, graph, notes
        "output_dir": str(out_dir), "options": spec.options_dict,
        "written_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "counts": {"total": summary.total, "done": summary.done, "failed": summary.failed},
        "timings": timings, "files": [str(f) for f in summary.files],
        "job_files": [str(f) for f in summary.job_files],
    }
    json_path = out_dir / REPORT_JSON
    with _atomic_text(json_path) as fh:
        fh.write(json.dumps(head, indent=2, default=str)[:-2])  # reopen the object
        fh.write(',\n  "failures": [')
        first = True
        for item in store.job_items(job_id, "failed"):
            fh.write(("\n    " if first else ",\n    ")
                     + json.dumps({"path": item.path, "reason": item.error or ""}))
            first = False
        fh.write("\n  ],\n  \"items\": [")
        first = True
        for item in store.job_items(job_id):  # every input and every file it produced
            fh.write(("\n    " if first else ",\n    ") + json.dumps(
                {"input": item.path, "state": item.state, "outputs": item.outputs,
                 "error": item.error}))
            first = False
        fh.write("\n  ]\n}\n")
    html_path = out_dir / REPORT_HTML
    with _atomic_text(html_path) as fh:
        fh.write(_html(head, store, job_id, summary))
    return json_path, html_path


class _atomic_text:
    """Write a text file through a temporary file renamed on success."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __enter__(self):
        fd, self.tmp = make_temp_file(self.path.parent, prefix=f".{self.path.name}.",
                                      suffix=".part")  # the umask's mode, not mkstemp's 0600
        self.fh = os.fdopen(fd, "w", encoding="utf-8")
        return self.fh

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            self.fh.close()  # a full disk shows here, when the last buffer is flushed
            if exc_type is None:
                os.replace(self.tmp, self.path)
        except BaseException:
            Path(self.tmp).unlink(missing_ok=True)
            raise
        if exc_type is not None:
            Path(self.tmp).unlink(missing_ok=True)


_CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,sans-serif;margin:2rem;color:#1d1d1f;
background:#fafafa}h1{font-size:1.4rem;margin:0 0 .3rem}.muted{color:#666}
.cards{display:flex;gap:1rem;margin:1rem 0}.card{background:#fff;border:1px solid #ddd;
border-radius:8px;padding:.7rem 1.1rem;min-width:7rem}.card b{display:block;font-size:1.5rem}
.failed b{color:#b3261e}table{border-collapse:collapse;background:#fff;width:100%}
td,th{border:1px solid #ddd;padding:.3rem .5rem;text-align:left;vertical-align:top}
th{background:#f0f0f0}code{font-size:.92em;word-break:break-all}
"""


def _html(head: dict[str, Any], store: JobStore, job_id: str, summary: JobSummary) -> str:
    e = html.escape
    counts = head["counts"]
    rows = []
    for n, item in enumerate(store.job_items(job_id, "failed")):
        if n >= HTML_FAILURES_SHOWN:
            rows.append(f"<tr><td colspan=2>… {counts['failed'] - n} more in "
                        f"{REPORT_JSON}</td></tr>")
            break
        rows.append(f"<tr><td><code>{e(item.path)}</code></td><td>{e(item.error or '')}</td></tr>")
    failures = ("<h2>Failures</h2><table><tr><th>Input</th><th>Reason</th></tr>"
                + "".join(rows) + "</table>") if rows else "<p>No failures.</p>"
    settings = "".join(f"<tr><th>{e(str(k))}</th><td><code>{e(json.dumps(v, default=str))}"
                       f"</code></td></tr>" for k, v in head["options"].items())
    timing = "".join(f"<tr><th>{e(k)}</th><td>{v}</td></tr>" for k, v in head["timings"].items())
    files = "".join(f"<li><code>{e(f)}</code></li>" for f in head["job_files"])
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Ocula job {e(job_id)}</title>
<style>{_CSS}</style></head><body>
<h1>{e(head['task'])} · {e(head['model'])}</h1>
<div class="muted">Job <code>{e(job_id)}</code> — {e(summary.state)} — {e(head['written_at'])}
</div>
<div class="cards"><div class="card"><b>{counts['total']}</b>inputs</div>
<div class="card"><b>{counts['done']}</b>done</div>
<div class="card failed"><b>{counts['failed']}</b>failed</div>
<div class="card"><b>{head['timings']['elapsed_s']:.1f} s</b>elapsed</div></div>
{failures}
<h2>Timings</h2><table>{timing}</table>
<h2>Settings</h2><table><tr><th>device</th><td>{e(head['device'])}</td></tr>
<tr><th>precision</th><td>{e(head['precision'])}</td></tr>
<tr><th>ran on</th><td>{e((head.get('ran') or {}).get('placement', ''))}</td></tr>{settings}</table>
<h2>Output</h2><p><code>{e(head['output_dir'])}</code></p>
{f'<ul>{files}</ul>' if files else ''}
</body></html>
"""
