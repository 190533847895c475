#!/usr/bin/env python3
"""Writes flow-dashboard.json, the Grafana dashboard over flow's Prometheus metrics.

Edit the panels here and run `python3 deploy/grafana/make_dashboard.py`; the JSON is what
Grafana imports (Dashboards > New > Import). tests/e2e/telemetry.rs checks that every metric
the panels query is one flow exports.
"""
import json
import pathlib

DS = {"type": "prometheus", "uid": "${datasource}"}
DAG = 'dag_id=~"$dag_id"'


def panel(title, exprs, unit=None, kind="timeseries", w=8, h=8, description=""):
    targets = [{"refId": chr(ord("A") + i), "expr": e, "legendFormat": legend, "datasource": DS}
               for i, (e, legend) in enumerate(exprs)]
    defaults = {"unit": unit} if unit else {}
    return {"type": kind, "title": title, "description": description, "datasource": DS,
            "targets": targets, "fieldConfig": {"defaults": defaults, "overrides": []},
            "options": {}, "w": w, "h": h}


def row(title):
    return {"type": "row", "title": title, "collapsed": False, "panels": [], "w": 24, "h": 1}


def p95(metric, by, selector=""):
    return (f"histogram_quantile(0.95, sum by (le, {by}) "
            f"(rate({metric}_bucket{{{selector}}}[$__rate_interval])))")


PANELS = [
    row("Runs and tries"),
    panel("Runs ended per minute", [
        (f"sum by (state) (rate(flow_runs_ended_total{{{DAG}}}[$__rate_interval])) * 60", "{{state}}"),
    ], description="What failed: run ends by state, from the scheduler that ended each run."),
    panel("Failed runs, last 24 h", [
        (f'sum by (dag_id) (increase(flow_runs_ended_total{{state="failed",{DAG}}}[24h]))', "{{dag_id}}"),
    ], kind="stat"),
    panel("Run duration p95", [(p95("flow_run_duration_seconds", "dag_id", DAG), "{{dag_id}}")], unit="s"),
    panel("Tries ended per minute", [
        (f"sum by (state) (rate(flow_tries_ended_total{{{DAG}}}[$__rate_interval])) * 60", "{{state}}"),
    ], description="up_for_retry is a retry; lost is a try whose process lost its lease."),
    panel("Slowest tasks (p95 over 1 h)", [
        (f"topk(10, histogram_quantile(0.95, sum by (le, dag_id, task_id) "
         f"(rate(flow_try_duration_seconds_bucket{{{DAG}}}[1h]))))", "{{dag_id}}.{{task_id}}"),
    ], unit="s", description="What is slow: each task's try duration."),
    panel("Active runs", [("sum by (dag_id, state) (flow_runs_active)", "{{dag_id}} {{state}}")]),
    row("Queues: what is stuck"),
    panel("Queued and running per pool", [
        ("sum by (pool) (flow_pool_queued)", "queued {{pool}}"),
        ("sum by (pool) (flow_pool_running)", "running {{pool}}"),
    ]),
    panel("Oldest queued task instance", [("max by (pool) (flow_pool_oldest_queued_age_seconds)", "{{pool}}")],
          unit="s", description="A growing line is a stuck pool: no free slot, or no worker serving its queue."),
    panel("Scheduling delay p95 (queued to claimed)", [(p95("flow_scheduling_delay_seconds", "pool"), "{{pool}}")],
          unit="s"),
    row("Scheduler and database"),
    panel("Loop pass p95", [(p95("flow_scheduler_pass_duration_seconds", "job, instance"), "{{instance}}")],
          unit="s"),
    panel("Database write wait p95", [(p95("flow_db_pool_wait_seconds", "job, instance"), "{{instance}}")],
          unit="s", description="Time a write waited for a pooled connection: a full pool or a slow database."),
    panel("Group commit: writes per transaction", [
        ("sum(rate(flow_group_commit_batch_sum[$__rate_interval])) / "
         "sum(rate(flow_group_commit_batch_count[$__rate_interval]))", "mean"),
    ]),
    panel("Orphans recovered (lease expiries), per hour", [
        ("sum(increase(flow_orphans_recovered_total[1h]))", "orphans"),
    ], description="Tries whose worker or host died; each is retried or failed by its policy."),
    row("API"),
    panel("Request latency p95 by route", [(p95("flow_api_request_duration_seconds", "route"), "{{route}}")],
          unit="s", w=12),
    panel("Requests per second by status", [
        ("sum by (status) (rate(flow_api_request_duration_seconds_count[$__rate_interval]))", "{{status}}"),
        ("sum(rate(flow_api_rate_limited_total[$__rate_interval]))", "rate-limited (429)"),
    ], w=12),
    row("Models and experiments"),
    panel("Model AUC", [('flow_model_metric{metric="auc"}', "{{model}} {{stage}}")]),
    panel("Drift (PSI) per feature", [("flow_drift_psi", "{{dag_id}} {{feature}}")],
          description="Above 0.2 is usually a shift worth retraining for; 0.1 to 0.2 a moderate one."),
    panel("Experiments: p-value and lift", [
        ("flow_experiment_p_value", "p {{experiment}} {{variant}}"),
        ("flow_experiment_lift", "lift {{experiment}} {{variant}}"),
    ]),
]


def layout(panels):
    x = y = 0
    row_h = 0
    out = []
    for i, p in enumerate(panels, start=1):
        w, h = p.pop("w"), p.pop("h")
        if p["type"] == "row" or x + w > 24:
            x, y = 0, y + row_h
            row_h = 0
        p["id"] = i
        p["gridPos"] = {"h": h, "w": w, "x": x, "y": y}
        out.append(p)
        if p["type"] == "row":
            y += h
        else:
            x += w
            row_h = max(row_h, h)
    return out


DASHBOARD = {
    "title": "flow",
    "uid": "flow-overview",
    "description": "flow's runs, tries, queues, scheduler, API and models, from GET /metrics (docs/observability.md).",
    "tags": ["flow"],
    "schemaVersion": 39,
    "version": 1,
    "editable": True,
    "time": {"from": "now-6h", "to": "now"},
    "refresh": "30s",
    "templating": {"list": [
        {"name": "datasource", "label": "Prometheus", "type": "datasource", "query": "prometheus"},
        {"name": "dag_id", "label": "DAG", "type": "query", "datasource": DS,
         "query": {"query": "label_values(flow_runs_ended_total, dag_id)", "refId": "dags"},
         "definition": "label_values(flow_runs_ended_total, dag_id)",
         "includeAll": True, "multi": True, "allValue": ".*", "refresh": 2,
         "current": {"text": "All", "value": "$__all"}},
    ]},
    "panels": layout(PANELS),
}

if __name__ == "__main__":
    out = pathlib.Path(__file__).with_name("flow-dashboard.json")
    out.write_text(json.dumps(DASHBOARD, indent=2) + "\n")
    print(f"wrote {out}")
