"""A Ray job's row in the Jobs dock shows one line per worker replica (issue 17: "per-worker
throughput in the CLI and GUI queue"), drawn from the Ray executor's own progress events
(engine.jobs.ray_executor.ClusterStatus), and says when a worker was lost."""
from __future__ import annotations

from engine.jobs.job_events import JobEvent
from engine.jobs.ray_executor import ClusterStatus, WorkerStatus


def test_ray_progress_draws_a_line_per_worker(qtbot):
    from desktop.views.queue import JobRow
    from desktop.workers import call_operation

    op = call_operation(lambda: None, label="detect · rtdetr-r18")
    op.kind = "job"
    op.started_at = 0.0
    row = JobRow(op, "/tmp/out")
    qtbot.addWidget(row)
    row.on_events([JobEvent(kind="started", job_id="j1", done=0, total=40)])
    assert not row.workers_label.isVisibleTo(row)
    status = ClusterStatus(workers=[
        WorkerStatus(0, 4101, "node-a", "onnx on CPUExecutionProvider (fp32)", 1, done=12, busy_s=4.0),
        WorkerStatus(1, 4102, "node-b", "onnx on CPUExecutionProvider (fp32)", 1, done=9, busy_s=3.0,
                     alive=False)], retried=2, driver_ms_per_item=0.31)
    row.on_events([JobEvent(kind="progress", job_id="j1", done=21, total=40, rate=5.0, eta_s=4.0,
                            message=status.line(), result=status)])
    lines = row.workers_label.text().splitlines()
    assert row.workers_label.isVisibleTo(row)
    assert lines[0] == "#0 node-a pid 4101 · onnx on CPUExecutionProvider (fp32) · 12 done · 3.0/s"
    assert lines[1].startswith("#1 node-b pid 4102") and "lost" in lines[1]
    assert lines[2] == "driver 0.31 ms/input · 2 retried"
    assert "21 / 40" in row.detail.text() and "5.0/s" in row.detail.text()
